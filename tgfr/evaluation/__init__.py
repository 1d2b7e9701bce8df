"""Evaluation: verification and identification metrics, the per-quality-level protocol, reports."""
from .attention import plot_attention_grid

# real test sets: every pair scored in row blocks, photos embedded batch by batch
from .metrics import (
                      FAR_TARGETS,
                      VerificationResult,
                      all_pair_scores,
                      area_under_curve,
                      equal_error_rate,
                      min_impostors_for_far,
                      pair_scores,
                      rank1_accuracy,
                      roc_curve,
                      tar_at_far,
                      verification_metrics,
)
from .protocol import (
                      FaceSet,
                      TestProtocol,
                      embed_dataset,
                      embed_faces,
                      evaluate,
                      evaluate_checkpoint,
                      evaluate_face_sets,
                      score_embeddings,
)
from .report import Result, markdown_table, plot_roc, write_report

__all__ = [
    "FAR_TARGETS", "FaceSet", "Result", "TestProtocol", "VerificationResult", "area_under_curve",
    "embed_faces", "equal_error_rate", "evaluate", "evaluate_checkpoint", "evaluate_face_sets", "markdown_table",
    "min_impostors_for_far", "pair_scores", "plot_attention_grid", "plot_roc", "rank1_accuracy", "roc_curve",
    "score_embeddings", "tar_at_far", "verification_metrics", "write_report",
]
__all__ += ["all_pair_scores", "embed_dataset"]
