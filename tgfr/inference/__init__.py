"""Using a trained model: ``tgfr.load(run_or_export)`` (embeddings, verification, identification),
``export`` (a shareable model directory) and the ``tgfr serve`` web app (:mod:`tgfr.inference.serve`)."""
from .api import FaceRecognizer, Verification, load
from .export import export
from .gallery import Gallery, Match

__all__ = ["FaceRecognizer", "Gallery", "Match", "Verification", "export", "load"]
