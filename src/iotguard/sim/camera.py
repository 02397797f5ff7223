"""Simulated camera scenes: standing figures whose heads are given face images.

The body detector's recall is measured against the person boxes these
scenes return. No permissively licensed set of photographs with person
boxes is at hand, so the figures are drawn (shirt, arms, trousers, about
seven heads tall) — a stand-in that the HOG people detector responds to,
not a photograph — and each head is a real face image the caller passes,
which the face redactor has to find and remove.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from iotguard.media.image import Box, Frame, cv2

__all__ = ["draw_person", "people_scene"]


def draw_person(frame: Frame, centre_x: int, top: int, height: int, face: Frame,
                rng: np.random.Generator) -> tuple[Box, Box]:
    """Draw a standing figure into ``frame`` (in place) with ``face`` (grey) as its head.

    Returns:
        The person box and the face box.
    """
    cx, head = centre_x, int(height / 7.0)
    shirt = tuple(int(c) for c in rng.integers(20, 230, 3))
    trousers = tuple(int(c) for c in rng.integers(10, 120, 3))
    skin = (int(np.median(face)),) * 3
    shoulders, neck, hip = int(height * 0.26), top + head, top + int(height * 0.52)
    waist = int(shoulders * 0.42)
    torso = np.array([[cx - shoulders // 2, neck + head // 5], [cx + shoulders // 2, neck + head // 5],
                      [cx + waist, top + int(height * 0.53)], [cx - waist, top + int(height * 0.53)]])
    cv2.fillConvexPoly(frame, torso, shirt, lineType=cv2.LINE_AA)
    arm, leg = max(3, int(height * 0.055)), max(4, int(height * 0.09))
    for side in (-1, 1):
        hand = (cx + side * int(shoulders * 0.62), top + int(height * 0.5))
        cv2.line(frame, (cx + side * (shoulders - arm) // 2, neck + head // 3), hand, shirt, arm, cv2.LINE_AA)
        cv2.line(frame, hand, (hand[0], top + int(height * 0.55)), skin, arm, cv2.LINE_AA)
        cv2.line(frame, (cx + side * int(shoulders * 0.2), hip),
                 (cx + side * int(shoulders * 0.28), top + height - leg // 2), trousers, leg, cv2.LINE_AA)
    cv2.rectangle(frame, (cx - waist, hip - 4), (cx + waist, hip + leg), trousers, -1)
    gray = face if face.ndim == 2 else cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
    f = cv2.cvtColor(cv2.resize(gray, (head, int(head * 1.15))), cv2.COLOR_GRAY2BGR)
    fx = cx - head // 2
    frame[top : top + f.shape[0], fx : fx + f.shape[1]] = f
    return (cx - int(shoulders * 0.65), top, int(shoulders * 1.3), height), (fx, top, f.shape[1], f.shape[0])


def people_scene(background: Frame, faces: Sequence[Frame], rng: np.random.Generator, *,
                 people: tuple[int, int] = (1, 3), heights: tuple[int, int] = (160, 420)) -> tuple[Frame, list[Box],
                                                                                                   list[Box]]:
    """A copy of ``background`` with ``people`` (min, max) figures side by side, each ``heights`` (min, max)
    pixels tall, heads taken from ``faces`` in turn.

    Returns:
        The frame, the person boxes and the face boxes.
    """
    frame = background.copy()
    fh, fw = frame.shape[:2]
    slots = np.arange(fw // 7, fw - fw // 8, max(1, fw // 4))
    bodies: list[Box] = []
    heads: list[Box] = []
    count = int(rng.integers(people[0], people[1] + 1))
    for j, x in enumerate(rng.permutation(slots)[:count]):
        height = int(rng.integers(heights[0], min(heights[1], fh - 10) + 1))
        top = int(rng.integers(5, fh - 5 - height + 1))
        body, head = draw_person(frame, int(x + rng.integers(-fw // 32, fw // 32 + 1)), top, height,
                                 faces[j % len(faces)], rng)
        bodies.append(body)
        heads.append(head)
    return frame, bodies, heads
