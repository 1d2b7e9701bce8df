"""Captions of synthetic faces in the two styles of the real corpora.

``template`` captions follow Multi-Modal-CelebA-HQ ("The woman has narrow eyes, big lips,
and wavy hair and wears heavy makeup. She is young, and smiling."), ``free`` captions
follow Face2Text ("A middle-aged olive-skinned woman with long wavy brown hair, thin
eyebrows and blue eyes. She is wearing glasses.").

Annotator noise, as in the real corpora:

* omission: each attribute is considered with probability ``mention_probability``, so a
  caption names a random subset of what the person looks like (at least two facts);
* contradiction: a considered attribute is stated with a wrong value with probability
  ``contradiction_probability`` (a blond person described as black-haired, glasses that
  are not there). Values with no wording (no beard, round eyes in the template style)
  are simply not said.

Captions talk about the identity's persistent attributes plus the photo's expression
(``smiling``, ``mouth_open``), so most of what they say survives image degradation.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .identities import ATTRIBUTE_VALUES

CAPTION_STYLES: tuple[str, ...] = ("template", "free")
# Photo-level facts captions may mention, next to the identity's attributes.
PHOTO_ATTRIBUTE_VALUES: Mapping[str, tuple] = {"smiling": (False, True), "mouth_open": (False, True)}
# Identity attributes that are never said outright (they choose the pronoun and rendering).
UNSPOKEN = ("smile_tendency",)

# Template style (Multi-Modal-CelebA-HQ): (verb, phrase) per attribute value; verb is one of
# "has", "wears", "is". Values missing here are not expressed in this style.
TEMPLATE_PHRASES: dict[str, dict[object, tuple[str, str]]] = {
    "age": {"young": ("is", "young"), "middle_aged": ("is", "middle-aged"), "old": ("is", "old")},
    "skin_tone": {"pale": ("has", "pale skin"), "fair": ("has", "fair skin"),
                  "olive": ("has", "olive skin"), "tan": ("has", "tanned skin"),
                  "brown": ("has", "brown skin"), "dark": ("has", "dark skin")},
    "hair_color": {"black": ("has", "black hair"), "brown": ("has", "brown hair"),
                   "blond": ("has", "blond hair"), "red": ("has", "red hair"),
                   "gray": ("has", "gray hair")},
    "hair_style": {"bald": ("is", "bald"), "short": ("has", "short hair"),
                   "straight": ("has", "straight hair"), "wavy": ("has", "wavy hair"),
                   "curly": ("has", "curly hair")},
    "bangs": {True: ("has", "bangs")},
    "eyeglasses": {True: ("wears", "eyeglasses")},
    "beard": {"goatee": ("has", "goatee"), "full": ("has", "beard")},
    "moustache": {True: ("has", "mustache")},
    "face_shape": {"oval": ("has", "oval face"), "round": ("has", "round face"),
                   "long": ("has", "long face"), "square": ("has", "square face")},
    "nose_size": {"small": ("has", "small nose"), "big": ("has", "big nose")},
    "eye_color": {"brown": ("has", "brown eyes"), "blue": ("has", "blue eyes"),
                  "green": ("has", "green eyes"), "gray": ("has", "gray eyes")},
    "eye_shape": {"narrow": ("has", "narrow eyes")},
    "eyebrows": {"thin": ("has", "thin eyebrows"), "bushy": ("has", "bushy eyebrows")},
    "arched_eyebrows": {True: ("has", "arched eyebrows")},
    "lip_size": {"thin": ("has", "thin lips"), "big": ("has", "big lips")},
    "makeup": {"lipstick": ("wears", "lipstick"), "heavy": ("wears", "heavy makeup")},
    "earrings": {True: ("wears", "earrings")},
    "hat": {True: ("wears", "hat")},
    "smiling": {True: ("is", "smiling")},
    "mouth_open": {True: ("has", "mouth slightly open")},
}

# Free style (Face2Text): noun phrases after "with", or whole clauses after the pronoun.
FREE_WITH: dict[str, dict[object, tuple[str, ...]]] = {
    "face_shape": {"oval": ("an oval face", "an oval-shaped face"), "round": ("a round face", "a rounded face"),
                   "long": ("a long face", "an elongated face"), "square": ("a square face", "a square jaw")},
    "nose_size": {"small": ("a small nose", "a little nose"), "big": ("a big nose", "a large nose")},
    "eyebrows": {"thin": ("thin eyebrows", "very thin eyebrows"), "bushy": ("bushy eyebrows", "thick eyebrows")},
    "arched_eyebrows": {True: ("arched eyebrows",)},
    "lip_size": {"thin": ("thin lips",), "big": ("full lips", "thick lips", "big lips")},
    "beard": {"goatee": ("a goatee",), "full": ("a beard", "a full beard", "a thick beard")},
    "moustache": {True: ("a moustache", "a mustache")},
    "bangs": {True: ("a fringe", "bangs")},
    "earrings": {True: ("earrings",)},
}
FREE_CLAUSES: dict[str, dict[object, tuple[str, ...]]] = {
    "eyeglasses": {True: ("is wearing glasses", "wears spectacles")},
    "hat": {True: ("is wearing a hat", "has a hat on")},
    "makeup": {"lipstick": ("is wearing lipstick",), "heavy": ("is wearing make-up", "wears heavy make-up")},
    "smiling": {True: ("is smiling",), False: ("has a serious expression", "is not smiling")},
    "mouth_open": {True: ("has {possessive} mouth slightly open",)},
}
# Worded in the free style for every value (in the head noun phrase or the hair and eye phrases).
FREE_ALWAYS_WORDED = ("gender", "age", "skin_tone", "hair_color", "hair_style", "eye_color", "eye_shape")
FREE_AGE = {"young": ("young",), "middle_aged": ("middle-aged",), "old": ("old", "elderly")}
FREE_SKIN = {"pale": ("pale", "pale-skinned"), "fair": ("fair-skinned", "white"),
             "olive": ("olive-skinned",), "tan": ("tanned", "sun-tanned"),
             "brown": ("brown-skinned",), "dark": ("dark-skinned", "black")}
FREE_HAIR_COLOR = {"black": ("black", "dark"), "brown": ("brown", "light brown", "dark brown"),
                   "blond": ("blonde", "blond"), "red": ("red", "ginger"), "gray": ("gray", "grey", "white")}
FREE_HAIR_STYLE = {"short": ("short",), "straight": ("long straight", "long", "straight"),
                   "wavy": ("wavy", "long wavy"), "curly": ("curly",)}
FREE_EYE_COLOR = {"brown": ("brown", "dark"), "blue": ("blue",), "green": ("green",), "gray": ("gray", "grey")}
FREE_EYE_SHAPE = {"narrow": ("narrow", "small"), "round": ("big round",)}


@dataclass(frozen=True)
class CaptionFact:
    """One attribute a caption states: its value and whether that is the truth."""

    attribute: str
    value: object
    truthful: bool


@dataclass(frozen=True)
class Caption:
    """A caption's ``text`` and its ``facts``: every attribute the text states, right or wrong
    (gender included where a noun or pronoun gives it away)."""

    text: str
    style: str
    facts: tuple[CaptionFact, ...]

    def statements(self) -> dict[str, object]:
        """``{attribute: value}`` as the caption states them (a contradiction states the wrong value)."""
        return {fact.attribute: fact.value for fact in self.facts}


def _join(items: list[str], rng: np.random.Generator) -> str:
    if len(items) == 1:
        return items[0]
    # The PCFG behind Multi-Modal-CelebA-HQ writes both "a and b" and "a, and b".
    if len(items) == 2:
        return f"{items[0]}{',' if rng.random() < 0.5 else ''} and {items[1]}"
    return ", ".join(items[:-1]) + ", and " + items[-1]


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _state_facts(truth: Mapping[str, object], rng: np.random.Generator, mention_probability: float,
                 contradiction_probability: float) -> list[CaptionFact]:
    """Omission and contradiction noise over every attribute of ``truth``, in random order."""
    facts = []
    for attribute in rng.permutation(sorted(truth)):
        attribute = str(attribute)
        if rng.random() >= mention_probability:
            continue
        value = truth[attribute]
        if rng.random() < contradiction_probability:
            values = {**ATTRIBUTE_VALUES, **PHOTO_ATTRIBUTE_VALUES}[attribute]
            wrong = [v for v in values if v != value]
            value = wrong[int(rng.integers(len(wrong)))]
        facts.append(CaptionFact(attribute, value, value == truth[attribute]))
    return facts


def _template_caption(facts: list[CaptionFact], gender: str, rng: np.random.Generator) -> tuple[str, bool]:
    """The caption text, and whether its nouns or pronouns give the gender away."""
    groups: dict[str, list[str]] = {"has": [], "wears": [], "is": []}
    for fact in facts:
        verb, phrase = TEMPLATE_PHRASES[fact.attribute][fact.value]
        groups[verb].append(phrase)
    noun, pronoun = ("man", "He") if gender == "male" else ("woman", "She")
    subject = _pick(rng, ("The person", "This person", f"The {noun}", f"This {noun}", pronoun))
    if groups["is"] and groups["has"] and rng.random() < 0.2:
        # "This smiling, and young woman has ..." form.
        subject = f"This {_join(groups['is'], rng)} {noun if subject != 'This person' else 'person'}"
        groups["is"] = []
    clauses = []
    for verb in rng.permutation(["has", "wears", "is"]):
        if groups[verb]:
            word = verb if verb != "wears" or rng.random() < 0.6 else "is wearing"
            clauses.append(f"{word} {_join(groups[verb], rng)}")
    sentences, current = [], []
    for clause in clauses:  # one or two clauses per sentence, joined by "and"
        current.append(clause)
        if len(current) == 2 or rng.random() < 0.6:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    text = []
    for i, sentence in enumerate(sentences):
        text.append(f"{subject if i == 0 else pronoun} {' and '.join(sentence)}.")
    return " ".join(text), len(sentences) > 1 or not subject.endswith("person")


def _free_caption(facts: list[CaptionFact], gender: str, rng: np.random.Generator) -> str:
    by_attribute = {fact.attribute: fact.value for fact in facts}
    stated_gender = by_attribute.get("gender", gender)
    pronoun, possessive = ("He", "his") if stated_gender == "male" else ("She", "her")
    adjectives = []
    if "age" in by_attribute:
        adjectives.append(_pick(rng, FREE_AGE[by_attribute["age"]]))
    if "skin_tone" in by_attribute:
        adjectives.append(_pick(rng, FREE_SKIN[by_attribute["skin_tone"]]))
    noun = _pick(rng, ("man", "guy") if stated_gender == "male" else ("woman", "lady"))

    with_phrases = []
    style, colour = by_attribute.get("hair_style"), by_attribute.get("hair_color")
    if style == "bald":
        with_phrases.append("a bald head")
    elif style is not None or colour is not None:
        words = [_pick(rng, FREE_HAIR_STYLE[style])] if style is not None else []
        words += [_pick(rng, FREE_HAIR_COLOR[colour])] if colour is not None else []
        with_phrases.append(" ".join(words) + " hair")
    eye_color, eye_shape = by_attribute.get("eye_color"), by_attribute.get("eye_shape")
    if eye_color is not None or eye_shape is not None:
        words = [_pick(rng, FREE_EYE_SHAPE[eye_shape])] if eye_shape is not None else []
        words += [_pick(rng, FREE_EYE_COLOR[eye_color])] if eye_color is not None else []
        with_phrases.append(" ".join(words) + " eyes")
    clauses = []
    for attribute in by_attribute:  # keeps the random order of the facts
        value = by_attribute[attribute]
        if attribute in FREE_WITH and value in FREE_WITH[attribute]:
            with_phrases.append(_pick(rng, FREE_WITH[attribute][value]))
        elif attribute in FREE_CLAUSES and value in FREE_CLAUSES[attribute]:
            clauses.append(_pick(rng, FREE_CLAUSES[attribute][value]).format(possessive=possessive))

    article = "An" if (adjectives[0] if adjectives else noun)[0] in "aeiou" else "A"
    head = " ".join([article] + adjectives + [noun])
    sentences = []
    if with_phrases:
        split = len(with_phrases) if len(with_phrases) <= 4 else int(rng.integers(3, len(with_phrases)))
        first, rest = with_phrases[:split], with_phrases[split:]
        sentences.append(f"{head} with {_join_free(first)}.")
        if rest:
            clauses.insert(0, f"has {_join_free(rest)}")
    else:
        sentences.append(f"{head}.")
    if clauses:
        sentences.append(f"{pronoun} {_join_free(clauses)}.")
    return " ".join(sentences)


def _join_free(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _expressible(fact: CaptionFact, style: str) -> bool:
    if style == "template":
        return fact.value in TEMPLATE_PHRASES.get(fact.attribute, {})
    if fact.attribute in FREE_ALWAYS_WORDED:
        return True
    table = FREE_WITH if fact.attribute in FREE_WITH else FREE_CLAUSES
    return fact.value in table.get(fact.attribute, {})


def make_caption(attributes: Mapping[str, object], photo: Mapping[str, bool], style: str,
                 rng: np.random.Generator, mention_probability: float = 0.4,
                 contradiction_probability: float = 0.05, min_facts: int = 2) -> Caption:
    """One caption of a person with ``attributes`` (an identity's) in a photo with ``photo``
    facts (``smiling``, ``mouth_open``), in ``style`` (one of :data:`CAPTION_STYLES`)."""
    if style not in CAPTION_STYLES:
        raise ValueError(f"style must be one of {CAPTION_STYLES}, got {style!r}")
    for name, probability in (("mention_probability", mention_probability),
                              ("contradiction_probability", contradiction_probability)):
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {probability}")
    truth = {k: v for k, v in attributes.items() if k not in UNSPOKEN}
    truth.update(photo)
    facts = [f for f in _state_facts(truth, rng, mention_probability, contradiction_probability)
             if _expressible(f, style)]
    if len(facts) < min_facts:
        # Nobody writes an empty description: add true, expressible facts.
        said = {f.attribute for f in facts}
        extra = [CaptionFact(k, truth[k], True) for k in map(str, rng.permutation(sorted(truth)))
                 if k not in said]
        facts += [f for f in extra if _expressible(f, style)][:min_facts - len(facts)]
    gender = str(attributes["gender"])
    if style == "template":
        # The pronoun carries the (true) gender; the style has no gender phrase to contradict.
        text, gendered = _template_caption(facts, gender, rng)
    else:
        if any(f.attribute == "hair_style" and f.value == "bald" for f in facts):
            facts = [f for f in facts if f.attribute != "hair_color"]  # "a bald head" has no colour
        text = _free_caption(facts, gender, rng)
        gendered = True  # the head noun ("man", "lady") always says one
    if gendered and not any(f.attribute == "gender" for f in facts):
        facts.append(CaptionFact("gender", gender, True))  # said by the wording, after the drawn facts
    return Caption(text=text, style=style, facts=tuple(facts))
