"""X-Modal retrieval: find a face from a text description, or from a reference photo plus a change description.

Face and frozen sentence-encoder features are projected into one space and trained with a
Multiple Negatives Ranking Loss whose explicit negatives are graded easy, semi-hard and
hard (:mod:`tgfr.retrieval.loss`, on the rectangular ``tgfr.ops.info_nce``); a gated
residual fusion composes a reference face with a change description. Commands:
``tgfr xmodal train``, ``tgfr xmodal eval``, ``tgfr retrieve``; in Python,
``tgfr.retrieval.load(run).search(text=..., image=...)``.
"""
from .config import PRESETS, XModalConfig, load_config
from .evaluation import evaluate_model, format_table, retrieval_metrics
from .loss import GRADES, NEGATIVE_SETTINGS, active_grades, graded_mnrl
from .models import FACE_ENCODERS, GatedResidualFusion, ResNet50, ViTSmall, XModalModel, build_face_encoder
from .search import Match, Retriever, load
from .train import load_run, train_xmodal

__all__ = [
    "FACE_ENCODERS", "GRADES", "NEGATIVE_SETTINGS", "PRESETS", "GatedResidualFusion", "Match", "ResNet50",
    "Retriever", "ViTSmall", "XModalConfig", "XModalModel", "active_grades", "build_face_encoder", "evaluate_model",
    "format_table", "graded_mnrl", "load", "load_config", "load_run", "retrieval_metrics", "train_xmodal",
]
