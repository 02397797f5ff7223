"""Privacy at the sensor for voice and images.

Media is protected where it is captured: voice is anonymised on the
microphone's frames (:mod:`iotguard.media.voice`), faces are irreversibly
redacted before a frame is encoded (:mod:`iotguard.media.image`), or only
the label of a device-side model leaves (:mod:`iotguard.media.sensing`).
The package also ships the attacker that measures this protection
(:mod:`iotguard.media.attacker`, :mod:`iotguard.media.evaluation`).
Pure computation: bytes and arrays in, bytes and arrays out.
"""

from iotguard.media.attacker import (
    DigitRecogniser,
    EmbeddingVerifier,
    SpeakerVerifier,
    Utterance,
    equal_error_rate,
    split_utterances,
)
from iotguard.media.audio import MAX_AUDIO_BYTES, Audio, decode_wav, encode_wav, mfcc
from iotguard.media.evaluation import (
    ImageEvaluation,
    VoiceEvaluation,
    anonymise_all,
    evaluate_images,
    evaluate_voice,
)
from iotguard.media.image import (
    FaceDetector,
    FaceRedactor,
    PeopleCounter,
    decode_image,
    encode_image,
    independent_face_detector,
)
from iotguard.media.pseudo_speaker import PseudoSpeaker
from iotguard.media.sensing import AudioModels, ImageModels, voice_activity
from iotguard.media.voice import (
    DEFAULT_VOICE_METHOD,
    VOICE_METHODS,
    McAdams,
    RandomisedVocoder,
    VoiceStream,
    VoiceTransform,
    voice_transform,
)

__all__ = [
    "DEFAULT_VOICE_METHOD",
    "MAX_AUDIO_BYTES",
    "VOICE_METHODS",
    "Audio",
    "AudioModels",
    "DigitRecogniser",
    "EmbeddingVerifier",
    "FaceDetector",
    "FaceRedactor",
    "ImageEvaluation",
    "ImageModels",
    "McAdams",
    "PeopleCounter",
    "PseudoSpeaker",
    "RandomisedVocoder",
    "SpeakerVerifier",
    "Utterance",
    "VoiceEvaluation",
    "VoiceStream",
    "VoiceTransform",
    "anonymise_all",
    "decode_image",
    "decode_wav",
    "encode_image",
    "encode_wav",
    "equal_error_rate",
    "evaluate_images",
    "evaluate_voice",
    "independent_face_detector",
    "mfcc",
    "split_utterances",
    "voice_activity",
    "voice_transform",
]
