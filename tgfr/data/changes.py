"""Change pairs of the embedded synthetic set: one person before and after an attribute edit.

A change pair renders the same identity twice, once as drawn and once with one or two of
its attributes edited (glasses, beard, hair colour, hair style, bangs, age), with a
sentence that describes the change ("He has grown a full beard and now wears glasses.").
It is the data of composed retrieval: the reference photo plus the change description
should find the person as they look now.

Everything is a function of ``(seed, identity, pair_index)``: the edit comes from the
random stream ``[seed, identity, pair_index, 3]``, the three photos (the reference before
the change, the target after it, a second photo before it) from ``[..., 4 + k]``. The
edited identity keeps its geometry and colours, so it stays the same person; only a new
hair colour gets a new (jittered) hair RGB.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .identities import HAIR_RGB, IdentityProfile, jitter_colour
from .render import render_face, sample_variation

#: The attributes a change pair may edit, in the order captions name them.
CHANGEABLE = ("eyeglasses", "beard", "hair_color", "hair_style", "bangs", "age")
AGE_ORDER = ("young", "middle_aged", "old")
LONG_STYLES = ("straight", "wavy", "curly")  # styles that can have bangs
STYLE_WORDS = {"bald": "is bald now", "short": "has short hair now", "straight": "now wears the hair long and straight",
               "wavy": "now has wavy hair", "curly": "now has curly hair"}
AGE_WORDS = {"middle_aged": "is middle-aged now", "old": "has grown old"}
BEARD_WORDS = {("none", "full"): "has grown a full beard", ("none", "goatee"): "has grown a goatee",
               ("goatee", "full"): "has grown the goatee into a full beard",
               ("full", "goatee"): "has trimmed the beard to a goatee",
               ("full", "none"): "has shaved off the beard", ("goatee", "none"): "has shaved off the goatee"}


@dataclass(frozen=True)
class ChangePair:
    """One person before and after an edit.

    ``changes`` maps each edited attribute to ``(before, after)``; every other attribute
    of ``before`` and ``after`` is equal. ``reference`` is the photo of the query,
    ``target`` the photo to find, ``other_before`` a second photo before the change (the
    hard negative of composed retrieval: right person, wrong state). Photos are uint8
    [S, S, 3].
    """

    identity: int
    before: IdentityProfile
    after: IdentityProfile
    changes: Mapping[str, tuple]
    caption: str
    reference: np.ndarray
    target: np.ndarray
    other_before: np.ndarray


def _possible_edits(attributes: Mapping[str, object]) -> dict[str, list]:
    """Every value each changeable attribute may take next, keeping the person consistent
    (beards on men, bangs only on long hair, no hair colour or bangs on a bald head)."""
    a = attributes
    edits: dict[str, list] = {"eyeglasses": [not a["eyeglasses"]]}
    if a["gender"] == "male":
        edits["beard"] = [v for v in ("none", "goatee", "full") if v != a["beard"]]
    if a["hair_style"] != "bald":
        edits["hair_color"] = [v for v in HAIR_RGB if v != a["hair_color"]]
        styles = LONG_STYLES + ("short",) if not a["bangs"] else LONG_STYLES
        edits["hair_style"] = [v for v in styles if v != a["hair_style"]]
    if a["hair_style"] in LONG_STYLES:
        edits["bangs"] = [not a["bangs"]]
    position = AGE_ORDER.index(a["age"])
    if position + 1 < len(AGE_ORDER):
        edits["age"] = [AGE_ORDER[position + 1]]  # people age forwards
    return edits


def change_profile(profile: IdentityProfile, rng: np.random.Generator,
                   max_edits: int = 2) -> tuple[IdentityProfile, dict[str, tuple]]:
    """``profile`` with one to ``max_edits`` attributes edited, and the ``{name: (before, after)}`` edits."""
    if max_edits < 1:
        raise ValueError(f"max_edits must be >= 1, got {max_edits}")
    attributes = dict(profile.attributes)
    colours = dict(profile.colours)
    changes: dict[str, tuple] = {}
    count = int(rng.integers(1, max_edits + 1))
    for _ in range(count):
        edits = {k: v for k, v in _possible_edits(attributes).items() if k not in changes}
        if not edits:
            break
        name = sorted(edits)[int(rng.integers(len(edits)))]
        value = edits[name][int(rng.integers(len(edits[name])))]
        changes[name] = (attributes[name], value)
        attributes[name] = value
        if name == "hair_color":
            colours["hair"] = jitter_colour(rng, HAIR_RGB[value])
    after = dataclasses.replace(profile, attributes=MappingProxyType(attributes),
                                colours=MappingProxyType(colours))
    return after, {k: changes[k] for k in CHANGEABLE if k in changes}


def _phrase(name: str, before, after, possessive: str) -> str:
    if name == "eyeglasses":
        return "now wears glasses" if after else "no longer wears glasses"
    if name == "bangs":
        return "now has bangs" if after else "no longer has bangs"
    if name == "beard":
        return BEARD_WORDS[(before, after)]
    if name == "hair_color":
        return f"has dyed {possessive} hair {after}" if after != "gray" else "has gone gray"
    if name == "hair_style":
        return STYLE_WORDS[after]
    if name == "age":
        return AGE_WORDS[after]
    raise ValueError(f"unknown changeable attribute {name!r}")


def change_caption(changes: Mapping[str, tuple], gender: str, rng: np.random.Generator) -> str:
    """One sentence that says what changed, e.g. ``"She now has bangs and has dyed her hair red."``."""
    if not changes:
        raise ValueError("changes must name at least one edited attribute")
    subject, possessive = ("He", "his") if gender == "male" else ("She", "her")
    if rng.random() < 0.3:
        subject = "The person" if rng.random() < 0.5 else f"The {'man' if gender == 'male' else 'woman'}"
    names = [str(n) for n in rng.permutation(list(changes))]
    phrases = [_phrase(n, *changes[n], possessive) for n in names]
    body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{subject} {body}."


def make_change_pair(profile: IdentityProfile, seed: int, pair_index: int, image_size: int = 112,
                     occlusion_probability: float = 0.25, max_edits: int = 2) -> ChangePair:
    """Change pair ``pair_index`` of ``profile`` (reproducible from its arguments)."""
    identity = profile.identity
    edit_rng = np.random.default_rng([seed, identity, pair_index, 3])
    after, changes = change_profile(profile, edit_rng, max_edits)
    caption = change_caption(changes, str(profile.attributes["gender"]), edit_rng)
    photos = []
    for k, person in enumerate((profile, after, profile)):
        variation = sample_variation(person, np.random.default_rng([seed, identity, pair_index, 4 + k]),
                                     occlusion_probability)
        photos.append(render_face(person, variation, image_size))
    return ChangePair(identity=identity, before=profile, after=after, changes=MappingProxyType(changes),
                      caption=caption, reference=photos[0], target=photos[1], other_before=photos[2])
