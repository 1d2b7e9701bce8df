"""Multiple Negatives Ranking Loss with graded negatives, on the rectangular InfoNCE.

MNRL (sentence-transformers) is cross-entropy from each query over ``scale * cos`` to
every gallery face of the batch, its own positive the target: in-batch InfoNCE in one
direction, temperature ``1 / scale``. Explicit negatives are extra gallery columns
shared by every query of the batch, graded by difficulty:

* ``easy``: a face of a random other identity;
* ``semi_hard``: an identity that shares some of the described attributes;
* ``hard``: an identity that shares most of them, or, for a composed query, the same
  person before the described change.

``b = [positives; easy; semi_hard; hard]`` has ``B + K`` rows and the positive of query
``i`` is row ``i``: exactly ``tgfr.ops.info_nce(..., offset=0, symmetric=False)``.
``class_ids`` keeps a column of the query's own class out of its denominator (two photos
of one person are not negatives of each other).

The grades enter on a curriculum (:func:`active_grades`): easy negatives from the first
step, semi-hard after ``starts[1]`` and hard after ``starts[2]`` of training. Hard
negatives from the start pull apart look-alikes before the encoder can tell people apart
at all, the collapse FaceNet met with its hardest negatives; after a warm-up they carry
the fine distinctions that in-batch negatives of random people rarely pose.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.precision import float32_island
from ..ops import info_nce

GRADES = ("easy", "semi_hard", "hard")
#: Ablation settings: which grades are used at all (each adds to the previous one).
NEGATIVE_SETTINGS = {"none": (), "easy": GRADES[:1], "semi_hard": GRADES[:2], "hard": GRADES}
DEFAULT_SCALE = 20.0  # sentence-transformers' MultipleNegativesRankingLoss


def active_grades(setting: str, progress: float, starts=(0.0, 0.2, 0.4)) -> tuple[str, ...]:
    """The grades used at ``progress`` (fraction of training done, 0..1) under ``setting``."""
    if setting not in NEGATIVE_SETTINGS:
        raise ValueError(f"negatives must be one of {sorted(NEGATIVE_SETTINGS)}, got {setting!r}")
    if len(starts) != len(GRADES):
        raise ValueError(f"grade_starts must give {len(GRADES)} fractions, got {starts}")
    return tuple(g for g, start in zip(GRADES, starts) if g in NEGATIVE_SETTINGS[setting] and progress >= start)


@float32_island
def graded_mnrl(queries: torch.Tensor, positives: torch.Tensor, positive_ids: torch.Tensor,
                negatives: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                scale: float = DEFAULT_SCALE, backend: str = "auto") -> torch.Tensor:
    """MNRL of ``queries`` [B, D] against ``positives`` [B, D] plus graded negative columns, computed as a
    float32 island (``tgfr.models.precision``: the temperature ``1 / scale`` in float32, whatever autocast does).

    Args:
        queries, positives: unit-norm embeddings; row ``i`` of each is a matching pair.
        positive_ids: int [B], the class of each positive (and so of its query).
        negatives: ``{grade: (embeddings [K_g, D], class ids [K_g])}``, appended as columns in
            :data:`GRADES` order; missing or empty grades add nothing.
        scale: inverse temperature (20 as in sentence-transformers).
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    columns, ids = [positives], [positive_ids]
    for grade in GRADES:
        if negatives and grade in negatives:
            embeddings, grade_ids = negatives[grade]
            columns.append(embeddings)
            ids.append(grade_ids.to(positive_ids.device))
    unknown = set(negatives or {}) - set(GRADES)
    if unknown:
        raise ValueError(f"negatives has unknown grades {sorted(unknown)}; expected some of {GRADES}")
    temperature = torch.tensor(1.0 / scale, dtype=queries.dtype, device=queries.device)
    return info_nce(queries, torch.cat(columns), temperature, class_ids=torch.cat(ids), backend=backend,
                    offset=0, symmetric=False)


class AttributeLoss(nn.Module):
    """Read the true attributes of a face back from its unit retrieval embedding: one cosine classifier per
    attribute (``scale`` times the cosine to a learned unit vector per value, as MNRL scores a face), for every
    attribute of ``names`` (empty: all) with two values or more among ``attributes``; cross-entropy averaged
    over the attributes, a photo without an attribute (or with a value not seen here) leaving it out.

    An auxiliary signal (our option, ``attribute_weight``; the abstract is silent): MNRL alone lets the face
    space keep whatever tells people apart, and what captions and change texts speak of (glasses, a beard, the
    hair) need not be among it; the attribute read-outs ask the space to hold it. Cosine, not linear: a linear
    head on a unit vector starts with logits near 0 and, at AdamW's step size, cannot grow them far within a
    short run, so its loss (and the pull on the face space) stalls (docs/xmodal.md, results).
    """

    def __init__(self, attributes: list[dict], dim: int, names=(), scale: float = DEFAULT_SCALE):
        super().__init__()
        values: dict[str, set] = {}
        for photo in attributes:
            for name, value in photo.items():
                if not names or name in names:
                    values.setdefault(name, set()).add(value)
        unknown = sorted(set(names) - set(values))
        if unknown:
            raise ValueError(f"names {unknown}: no photo has them; the photos have "
                             f"{sorted({n for photo in attributes for n in photo})}")
        self.classes = {name: {v: i for i, v in enumerate(sorted(found, key=repr))}
                        for name, found in sorted(values.items()) if len(found) > 1}
        self.scale = scale
        self.heads = nn.ModuleList(nn.Linear(dim, len(c), bias=False) for c in self.classes.values())

    def targets(self, attributes: list[dict]) -> torch.Tensor:
        """``[N, A]`` class indices of each photo's attributes, -100 where unknown."""
        return torch.tensor([[classes.get(photo.get(name), -100) for name, classes in self.classes.items()]
                             for photo in attributes], dtype=torch.long)

    def logits(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        """Per attribute, ``[N, values]``: ``scale`` times the cosine of each embedding to each value's vector."""
        unit = F.normalize(embeddings, dim=1)
        return [self.scale * unit @ F.normalize(head.weight, dim=1).T for head in self.heads]

    @float32_island
    def forward(self, embeddings: torch.Tensor, attributes: list[dict]) -> torch.Tensor:
        targets = self.targets(attributes).to(embeddings.device)
        losses = [F.cross_entropy(logits, targets[:, a], ignore_index=-100)
                  for a, logits in enumerate(self.logits(embeddings)) if (targets[:, a] >= 0).any()]
        return torch.stack(losses).mean() if losses else embeddings.sum() * 0
