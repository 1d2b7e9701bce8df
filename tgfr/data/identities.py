"""Synthetic identities: persistent discrete attributes, continuous geometry and colours.

An identity is drawn from ``numpy.random.default_rng([seed, identity])`` alone, so identity
``k`` is the same person whatever the total number of identities, and the same seed always
gives the same people.

The discrete attributes are what captions talk about; the geometry (eye spacing, face
width, nose length, ...) and the exact colours are what tells apart two identities that
share every discrete attribute, and what image degradation destroys first.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

#: Every discrete attribute and its possible values (booleans are ``(False, True)``).
ATTRIBUTE_VALUES: Mapping[str, tuple] = MappingProxyType({
    "gender": ("male", "female"),
    "age": ("young", "middle_aged", "old"),
    "skin_tone": ("pale", "fair", "olive", "tan", "brown", "dark"),
    "hair_color": ("black", "brown", "blond", "red", "gray"),
    "hair_style": ("bald", "short", "straight", "wavy", "curly"),
    "bangs": (False, True),
    "eyeglasses": (False, True),
    "beard": ("none", "goatee", "full"),
    "moustache": (False, True),
    "smile_tendency": ("rarely", "often"),
    "face_shape": ("oval", "round", "long", "square"),
    "nose_size": ("small", "big"),
    "eye_color": ("brown", "blue", "green", "gray"),
    "eye_shape": ("round", "narrow"),
    "eyebrows": ("thin", "bushy"),
    "arched_eyebrows": (False, True),
    "lip_size": ("thin", "big"),
    "makeup": ("none", "lipstick", "heavy"),
    "earrings": (False, True),
    "hat": (False, True),
})

#: Continuous per-identity shape parameters, each uniform in [-1, 1]; the renderer maps
#: them to small offsets of facial landmarks.
GEOMETRY_NAMES: tuple[str, ...] = (
    "eye_spacing", "eye_height", "eye_size", "face_width", "face_height", "jaw_width",
    "nose_length", "nose_width", "mouth_height", "mouth_width", "brow_height", "brow_tilt",
    "ear_size", "hair_volume", "iris_size", "hairline",
)

SKIN_RGB = {"pale": (244, 222, 206), "fair": (234, 196, 168), "olive": (205, 165, 120),
            "tan": (196, 146, 104), "brown": (150, 102, 70), "dark": (96, 64, 46)}
HAIR_RGB = {"black": (28, 24, 22), "brown": (104, 66, 38), "blond": (226, 190, 120),
            "red": (170, 70, 34), "gray": (168, 168, 170)}
EYE_RGB = {"brown": (96, 58, 30), "blue": (60, 120, 200), "green": (70, 140, 80),
           "gray": (130, 140, 150)}
# Accessory colours are per identity (people keep their glasses and hats).
FRAME_RGB = ((20, 20, 20), (110, 70, 30), (200, 170, 60), (150, 30, 40))
HAT_RGB = ((180, 40, 40), (40, 60, 150), (40, 110, 60), (60, 60, 60), (210, 200, 170))
LIPSTICK_RGB = ((190, 30, 50), (220, 90, 120), (150, 40, 70))
COLOUR_JITTER = 14  # +- per channel: identities with the same named colour still differ


@dataclass(frozen=True)
class IdentityProfile:
    """One synthetic person.

    ``attributes`` maps every name of :data:`ATTRIBUTE_VALUES` to one of its values,
    ``geometry`` holds :data:`GEOMETRY_NAMES` in order (float32, each in [-1, 1]) and
    ``colours`` the identity's exact RGB colours (keys ``skin``, ``hair``, ``eye``,
    ``frame``, ``hat``, ``lipstick``).
    """

    identity: int
    attributes: Mapping[str, object]
    geometry: np.ndarray
    colours: Mapping[str, tuple[int, int, int]]

    def geometry_value(self, name: str) -> float:
        return float(self.geometry[GEOMETRY_NAMES.index(name)])


def _choice(rng: np.random.Generator, values: tuple, weights: tuple[float, ...]):
    probabilities = np.asarray(weights, dtype=np.float64)
    return values[int(rng.choice(len(values), p=probabilities / probabilities.sum()))]


def jitter_colour(rng: np.random.Generator, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """``rgb`` with each channel shifted by up to ``COLOUR_JITTER`` (one person's shade of a named colour)."""
    shifted = np.asarray(rgb) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    return tuple(int(c) for c in np.clip(shifted, 0, 255))


def sample_identity(seed: int, identity: int) -> IdentityProfile:
    """Draw identity ``identity`` of the population defined by ``seed``.

    Attributes are correlated the way faces are (beards on men, make-up and long hair
    more often on women, gray hair with age) so that captions read plausibly.
    """
    if identity < 0:
        raise ValueError(f"identity must be >= 0, got {identity}")
    rng = np.random.default_rng([int(seed), int(identity)])
    male = bool(rng.random() < 0.5)
    age = _choice(rng, ATTRIBUTE_VALUES["age"], (0.5, 0.3, 0.2))
    gray_weight = {"young": 0.02, "middle_aged": 0.2, "old": 1.5}[age]
    hair_color = _choice(rng, ATTRIBUTE_VALUES["hair_color"], (1.0, 1.0, 0.7, 0.3, gray_weight))
    style_weights = (0.25 if age == "old" else 0.08, 1.0, 0.3, 0.2, 0.2) if male else \
        (0.0, 0.25, 1.0, 0.8, 0.4)
    hair_style = _choice(rng, ATTRIBUTE_VALUES["hair_style"], style_weights)
    attributes = {
        "gender": "male" if male else "female",
        "age": age,
        "skin_tone": _choice(rng, ATTRIBUTE_VALUES["skin_tone"], (1, 1, 1, 1, 1, 1)),
        "hair_color": hair_color,
        "hair_style": hair_style,
        "bangs": hair_style not in ("bald", "short") and bool(rng.random() < 0.3),
        "eyeglasses": bool(rng.random() < 0.25),
        "beard": _choice(rng, ATTRIBUTE_VALUES["beard"], (0.6, 0.15, 0.25)) if male else "none",
        "moustache": male and bool(rng.random() < 0.3),
        "smile_tendency": _choice(rng, ATTRIBUTE_VALUES["smile_tendency"], (1, 1)),
        "face_shape": _choice(rng, ATTRIBUTE_VALUES["face_shape"], (1, 1, 1, 1)),
        "nose_size": _choice(rng, ATTRIBUTE_VALUES["nose_size"], (1.0, 0.7 if male else 0.4)),
        "eye_color": _choice(rng, ATTRIBUTE_VALUES["eye_color"], (1.5, 1.0, 0.6, 0.4)),
        "eye_shape": _choice(rng, ATTRIBUTE_VALUES["eye_shape"], (0.7, 0.3)),
        "eyebrows": _choice(rng, ATTRIBUTE_VALUES["eyebrows"], (0.4, 0.6) if male else (0.7, 0.3)),
        "arched_eyebrows": bool(rng.random() < (0.15 if male else 0.45)),
        "lip_size": _choice(rng, ATTRIBUTE_VALUES["lip_size"], (0.6, 0.4)),
        "makeup": "none" if male else _choice(rng, ATTRIBUTE_VALUES["makeup"], (0.4, 0.3, 0.3)),
        "earrings": (not male) and bool(rng.random() < 0.4),
        "hat": bool(rng.random() < 0.12),
    }
    geometry = rng.uniform(-1.0, 1.0, size=len(GEOMETRY_NAMES)).astype(np.float32)
    colours = {
        "skin": jitter_colour(rng, SKIN_RGB[attributes["skin_tone"]]),
        "hair": jitter_colour(rng, HAIR_RGB[hair_color]),
        "eye": jitter_colour(rng, EYE_RGB[attributes["eye_color"]]),
        "frame": FRAME_RGB[int(rng.integers(len(FRAME_RGB)))],
        "hat": jitter_colour(rng, HAT_RGB[int(rng.integers(len(HAT_RGB)))]),
        "lipstick": LIPSTICK_RGB[int(rng.integers(len(LIPSTICK_RGB)))],
    }
    return IdentityProfile(identity=int(identity), attributes=MappingProxyType(attributes),
                           geometry=geometry, colours=MappingProxyType(colours))
