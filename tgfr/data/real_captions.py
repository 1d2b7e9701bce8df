"""The sample of real face captions shipped with the package (``assets/``).

``load_real_captions()`` returns dicts ``{"identity": "<corpus>:<id>", "image": str,
"captions": [str, ...]}`` from Face2Text (free-form human descriptions) and
Multi-Modal-CelebA-HQ (template captions); ``corpus`` keeps one of the two.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

REAL_CAPTION_CORPORA = ("face2text", "mmcelebahq")


@lru_cache(maxsize=1)
def _entries() -> tuple[dict, ...]:
    text = resources.files(__package__).joinpath("assets/real_captions_sample.jsonl").read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def load_real_captions(corpus: str | None = None) -> list[dict]:
    """The shipped entries, all or those of ``corpus`` (one of :data:`REAL_CAPTION_CORPORA`)."""
    if corpus is not None and corpus not in REAL_CAPTION_CORPORA:
        raise ValueError(f"corpus must be one of {REAL_CAPTION_CORPORA} or None, got {corpus!r}")
    return [dict(entry, captions=list(entry["captions"])) for entry in _entries()
            if corpus is None or entry["identity"].startswith(corpus + ":")]
