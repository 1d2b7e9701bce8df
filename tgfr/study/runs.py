"""What the study runs: every trained system, as its changes to the study's training config.

The systems the paper compares share one caption encoder, the study's *main* encoder: the
transformer (``text_model``) when there is one, else the BiLSTM. TGFR (paper), the FLF and
CGFR-style baselines of Table 2 and the loss ablation of Table 3 run on it. With a transformer,
FLF and TGFR also run on the BiLSTM: the text-encoder ablation (the paper's Table 4).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import merge

BILSTM = "bilstm"
# every run's name, in the order the study trains them: Table 2's first (they decide its main claims)
RUN_NAMES = ("tgfr", "flf", "cgfr", "id", "id_cicl", "id_wrcl", "id_imcl", "tgfr_variants", "flf_bilstm",
             "tgfr_bilstm")


@dataclass(frozen=True)
class Run:
    """One trained system: its changes to the training config and the embedding modes it is scored in."""

    name: str
    label: str
    changes: dict = field(hash=False)
    modes: tuple


def encoder_name(text_model: str | None) -> str:
    """How the tables call a caption encoder: ``BiLSTM``, ``MiniLM`` or a local model's directory name."""
    if not text_model or text_model == BILSTM:
        return "BiLSTM"
    return "MiniLM" if text_model == "minilm" else Path(text_model).name


def _fusions(*modes: str) -> dict:
    """A model with the fusion heads ``modes`` alone, each trained."""
    return {"model": {"fusions": list(modes)}, "fusion": {"modes": list(modes)}}


def _fcam_weights(wrcl=0, id=100, cicl=0, imcl=0) -> dict:
    """Table 3: the identity loss in every row (the paper's λ1 = 100), the other terms at their λ or off."""
    return {"align": {"weights": {"wrcl": wrcl, "id": id, "cicl": cicl, "imcl": imcl}}}


_TGFR = _fusions("tgfr")
_FLF = merge({"align": {"objective": "id"}}, _fusions("flf"))
_CGFR = merge({"align": {"objective": "cgfr"}}, _fusions("cgfr"))
# every project-specific variant at once: gated face feature, regions as coarse keys, GroupNorm
# IMIM with a gate, local-global IMCL, averaged ID/CICL/WRCL, same-identity masking, eq. 5 as coded,
# and training on degraded views too
_PROJECT_VARIANTS = {
    "model": {"imim_form": "residual", "imim_norm": "group", "imim_gate": True,
              "fcfm_coarse_keys": "global_regions", "fcfm_face_feature": "gated"},
    "align": {"imcl": "local_global", "scaling": "mean", "wrcl_reduction": "mean", "mask_same_identity": True,
              "wrcl_exponent": False, "qualities": ["normal", "mixed"]},
    "fusion": {"qualities": ["normal", "mixed", "very_bad"]},
}


def study_runs(text_model: str | None, transformer_text_lr: float | None = None) -> list[Run]:
    """Every run of the study. ``text_model``: the transformer caption encoder (None: the BiLSTM is the
    main encoder and the text-encoder ablation is left out), trained at ``transformer_text_lr``
    (None: the training config's rate for a transformer; 0: frozen)."""
    main = {"model": {"text_encoder": text_model or BILSTM}}
    if text_model and transformer_text_lr is not None:
        main["align"] = {"text_lr": transformer_text_lr}
    bilstm = {"model": {"text_encoder": BILSTM}}
    runs = [
        Run("tgfr", "TGFR (paper)", merge(main, _TGFR), ("image", "tgfr")),
        Run("flf", "BERT-FLF" if text_model else "BiLSTM-FLF", merge(main, _FLF), ("flf",)),
        Run("cgfr", "CGFR-style", merge(main, _CGFR), ("cgfr",)),
        Run("id", "ID", merge(main, _fcam_weights(), _TGFR), ("tgfr",)),
        Run("id_cicl", "ID + CICL", merge(main, _fcam_weights(cicl=2), _TGFR), ("tgfr",)),
        Run("id_wrcl", "ID + WRCL", merge(main, _fcam_weights(wrcl=1), _TGFR), ("tgfr",)),
        Run("id_imcl", "ID + IMCL", merge(main, _fcam_weights(imcl=1), _TGFR), ("tgfr",)),
        Run("tgfr_variants", "TGFR (tgfr variants)", merge(main, _PROJECT_VARIANTS, _TGFR), ("tgfr",)),
    ]
    if text_model:
        runs += [
            Run("flf_bilstm", "BiLSTM-FLF", merge(bilstm, _FLF), ("flf",)),
            Run("tgfr_bilstm", "TGFR (paper) on the BiLSTM", merge(bilstm, _TGFR), ("tgfr",)),
        ]
    return runs
