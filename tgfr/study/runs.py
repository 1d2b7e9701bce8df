"""What the study runs: every trained system, as its changes to the study's training config."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import merge

# BERT-like rows need a transformer caption encoder (a local Hugging Face model or the optional MiniLM)
BERT_SYSTEMS = ("bert_flf", "cgfr")


@dataclass(frozen=True)
class Run:
    """One trained system: its changes to the training config and the embedding modes it is scored in."""

    name: str
    label: str
    changes: dict = field(hash=False)
    modes: tuple


def _fusions(*modes: str) -> dict:
    """A model with the fusion heads ``modes`` alone, each trained."""
    return {"model": {"fusions": list(modes)}, "fusion": {"modes": list(modes)}}


def _fcam_weights(wrcl=1, id=0, cicl=0, imcl=0) -> dict:
    return {"align": {"weights": {"wrcl": wrcl, "id": id, "cicl": cicl, "imcl": imcl}}}


_TGFR_ONLY = _fusions("tgfr")
_MIXED_VIEWS = {"align": {"qualities": ["normal", "mixed"]}, "fusion": {"qualities": ["normal", "mixed", "very_bad"]}}
# every project-specific variant at once: gated face feature, regions as coarse keys, GroupNorm
# IMIM with a gate, local-global IMCL, averaged ID/CICL, same-identity masking, eq. 5 as coded
_PROJECT_VARIANTS = {
    "model": {"imim_norm": "group", "imim_gate": True, "fcfm_coarse_keys": "global_regions",
              "fcfm_face_feature": "gated"},
    "align": {"imcl": "local_global", "scaling": "mean", "mask_same_identity": True, "wrcl_exponent": False},
}


def study_runs(text_model: str | None, transformer_text_lr: float | None = None) -> list[Run]:
    """Every run of the study; the BERT-like runs only with a ``text_model``, their caption encoder
    trained at ``transformer_text_lr`` (None: the study's)."""
    runs = [
        Run("tgfr", "TGFR (paper)", _fusions("tgfr", "flf"), ("image", "tgfr")),
        Run("bilstm_flf", "BiLSTM-FLF", merge({"align": {"objective": "id"}}, _fusions("flf")), ("flf",)),
        Run("wrcl", "WRCL", merge(_fcam_weights(), _TGFR_ONLY), ("tgfr",)),
        Run("wrcl_id", "WRCL + ID", merge(_fcam_weights(id=100), _TGFR_ONLY), ("tgfr",)),
        Run("wrcl_cicl", "WRCL + CICL", merge(_fcam_weights(cicl=2), _TGFR_ONLY), ("tgfr",)),
        Run("wrcl_imcl", "WRCL + IMCL", merge(_fcam_weights(imcl=1), _TGFR_ONLY), ("tgfr",)),
        Run("tgfr_mixed", "TGFR (paper), mixed-view training", merge(_MIXED_VIEWS, _TGFR_ONLY), ("tgfr",)),
        Run("tgfr_variants", "TGFR (tgfr variants)", merge(_PROJECT_VARIANTS, _MIXED_VIEWS, _TGFR_ONLY), ("tgfr",)),
    ]
    if text_model:
        transformer = {"model": {"text_encoder": text_model}}
        if transformer_text_lr is not None:
            transformer["align"] = {"text_lr": transformer_text_lr}
        runs[2:2] = [
            Run("bert_flf", "BERT-FLF", merge(transformer, {"align": {"objective": "id"}}, _fusions("flf")), ("flf",)),
            Run("cgfr", "CGFR-style", merge(transformer, {"align": {"objective": "cgfr"}}, _fusions("cgfr")),
                ("cgfr",)),
        ]
    return runs
