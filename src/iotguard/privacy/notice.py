"""Plain-language privacy notices rendered from a data contract.

Written for the person who owns the device: what is collected, why, in how
much detail, for how long, whether they can say no, and how to withdraw.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from iotguard.privacy.contract import DataContract, FieldSpec, LegalBasis, TransformSpec

__all__ = ["DeviceSupport", "render_notice"]

_BASIS = {
    LegalBasis.CONSENT: "only if you say yes. You can say no, or change your mind at any time.",
    LegalBasis.CONTRACT: "because the service you signed up for needs it. You can object to it at any time; "
    "the service may then not work fully.",
    LegalBasis.LEGAL_OBLIGATION: "because the law requires it.",
    LegalBasis.VITAL_INTERESTS: "to protect your life or health.",
    LegalBasis.PUBLIC_TASK: "for a task in the public interest.",
    LegalBasis.LEGITIMATE_INTERESTS: "because it is needed to run the service well, and it is kept coarse "
    "so it tells little about you. You can object to it at any time.",
}


def _duration(d: timedelta) -> str:
    days = d.days
    if days >= 365 and days % 365 == 0:
        n, unit = days // 365, "year"
    elif days >= 7 and days % 7 == 0 and days < 365:
        n, unit = days // 7, "week"
    elif days >= 1:
        n, unit = days, "day"
    elif d.seconds >= 3600:
        n, unit = d.seconds // 3600, "hour"
    elif d.seconds >= 60:
        n, unit = d.seconds // 60, "minute"
    else:
        n, unit = d.seconds, "second"
    return f"{n} {unit}{'s' if n != 1 else ''}"


def _detail(f: FieldSpec, chain: tuple[TransformSpec, ...]) -> str:
    if not chain:
        return "as measured"
    parts = []
    for t in chain:
        p = t.params
        if t.kind == "round":
            parts.append(
                "rounded to a whole number"
                if p["decimals"] == 0
                else f"rounded to {p['decimals']} decimal(s)"
            )
        elif t.kind == "bin":
            parts.append(f"only as a band {p['width']:g} {f.unit} wide".replace("  ", " "))
        elif t.kind == "topbottom":
            parts.append(f"with values outside {p['low']:g}-{p['high']:g} {f.unit} shown as the limit")
        elif t.kind == "time_bucket":
            parts.append(f"only to the nearest {_duration(timedelta(seconds=int(p['seconds'])))}")
        elif t.kind == "location_round":
            metres = {0: "100 km", 1: "10 km", 2: "1 km", 3: "100 m", 4: "10 m"}.get(
                int(p["decimals"]), "1 m"
            )
            parts.append(f"only to within about {metres}")
        elif t.kind == "geohash":
            size = {1: "5000 km", 2: "1250 km", 3: "150 km", 4: "40 km", 5: "5 km", 6: "1 km", 7: "150 m"}
            parts.append(f"only as an area about {size.get(int(p['precision']), '40 m')} across")
        elif t.kind == "pseudonym":
            parts.append("replaced by a code that changes regularly and differs for each purpose")
        elif t.kind == "ldp":
            parts.append(
                "with random noise added on your device, so no single value can be trusted to be yours "
                f"(local differential privacy, epsilon {t.epsilon:g})"
            )
    return ", ".join(parts)


@dataclass(frozen=True)
class DeviceSupport:
    """Lifecycle facts a signed firmware release states for its device model.

    Attributes:
        end_of_support: Last day the model receives security updates.
        disclosure_contact: Where to report a vulnerability.
        version: The firmware release stating them.
    """

    end_of_support: date
    disclosure_contact: str
    version: int


def render_notice(contract: DataContract, support: DeviceSupport | None = None) -> str:
    """Render the plain-language notice for a device model's contract (with its support facts when known)."""
    heading = f"What your {contract.title} shares, and why"
    lines = [
        heading,
        "=" * len(heading),
        "",
        f"Who is responsible: {contract.controller}. Questions: {contract.contact}.",
        "",
        "Nothing leaves the device unless it is listed below for a purpose that is switched on.",
        "",
    ]
    for p in sorted(contract.purposes.values(), key=lambda p: p.name):
        lines.append(f"* {p.name.replace('_', ' ').capitalize()}: {p.description}.")
        lines.append(f"  We do this {_BASIS[p.legal_basis]}")
        for fname, chain in p.fields.items():
            f = contract.fields[fname]
            lines.append(f"  - {f.description}, {_detail(f, chain)}")
        for mname, release in p.media.items():
            what = {"none": "kept on the device", "inference": "kept on the device; only the "
                    "result of a model on the device leaves, as listed above",
                    "anonymised": f"leave the device only after anonymisation on it ({release.method})",
                    "raw": "leave the device as captured, only because you said yes"}[release.release.value]
            lines.append(f"  - {contract.media[mname].description}: {what}")
        often = _duration(p.min_interval)
        lines.append(f"  At most once every {often}. Kept for {_duration(p.retention)}, then deleted.")
        if p.time_resolution is not None:
            lines.append(f"  Times are shown only to the nearest {_duration(p.time_resolution)}.")
        lines.append("")
    if contract.budget_epsilon > 0:
        limit = f"epsilon {contract.budget_epsilon:g} per {_duration(contract.budget_period)}"
        lines.append(
            "Noisy values: your device adds up how much it has revealed and stops sharing noisy values "
            f"once a fixed limit ({limit}) is reached."
        )
        lines.append("")
    lines += [
        "Your choices",
        f"- To withdraw consent or object: {contract.withdraw}. It takes effect at once: the device stops "
        "sending for that purpose.",
        "- You can ask for a copy of everything held about you, or for it to be erased.",
        f"- This notice describes data contract version {contract.version} of {contract.model}.",
    ]
    if support is not None:
        lines += [
            "",
            "Security updates",
            f"- This device model receives security updates until {support.end_of_support.isoformat()} "
            f"(stated in its signed firmware release {support.version}).",
            f"- To report a security vulnerability: {support.disclosure_contact}.",
        ]
    return "\n".join(lines)
