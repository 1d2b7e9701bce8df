"""A trained X-Modal run as a search engine: ``tgfr.retrieval.load(run).search(text=..., image=...)``.

The gallery (the embedded test people, or a folder of faces) is embedded once and cached in
``RUN/index`` (:mod:`tgfr.retrieval.index`); each query costs one sentence-encoder pass and,
for a composed query, one face-encoder pass.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from ..data.images import read_pixels
from ..inference.gallery import GalleryIndex, Match, rank_gallery
from .data import images_to_tensor
from .index import gallery_index
from .train import load_run, prepare


def run_directory(run) -> Path:
    """The run directory of a run directory or its checkpoint file."""
    return Path(run) if Path(run).is_dir() else Path(run).parent


class Retriever:
    """An X-Modal run and one gallery; queries are thread-safe (one at a time through the model). With
    ``skip_bad``, gallery photos that do not decode are left out (their names in ``skipped``)."""

    def __init__(self, run, gallery=None, skip_bad: bool = False):
        self.run_dir = run_directory(run)
        self.config, self.model, self.state = load_run(self.run_dir)
        self.gallery, self.skip_bad, self.skipped = gallery, skip_bad, []
        self._lock = threading.Lock()
        self._encoder = None
        self._index = None
        self.index_path: Path | None = None
        self.index_reused = False

    @property
    def index(self) -> GalleryIndex:
        """The gallery's index, built (and cached on disk) at first use."""
        with self._lock:
            if self._index is None:
                self._index, self.index_path, self.index_reused = gallery_index(
                    self.run_dir, self.model, self.config, self.gallery,
                    lambda: prepare(self.config, self.run_dir)[0], self.skip_bad, self.skipped)
            return self._index

    def query_pixels(self, image) -> np.ndarray:
        """A reference photo (path, PIL image or uint8 array) as the model reads it, uint8 [S, S, 3]."""
        return read_pixels(image, self.config.image_size)

    @torch.no_grad()
    def search(self, text: str, image=None, top_k: int = 10) -> list[Match]:
        """The ``top_k`` gallery faces for a description, or for a reference photo (``image``) plus a
        description of how the person changed; best first."""
        from .text import SentenceEncoder

        if not isinstance(text, str) or not text.strip():
            raise ValueError("the description (text) must contain at least one word")
        reference = self.query_pixels(image) if image is not None else None
        index = self.index
        with self._lock:
            if self._encoder is None:
                self._encoder = SentenceEncoder(self.config.text_encoder, self.config.max_tokens)
            sentence = self._encoder([text]).sentences
            if reference is None:
                query = self.model.embed_texts(sentence)
            else:
                query = self.model.compose(self.model.embed_faces(images_to_tensor(reference[None])), sentence)
        return rank_gallery(index, query, top_k)


def load(run, gallery=None, skip_bad: bool = False) -> Retriever:
    """The X-Modal run in ``run`` (its directory or checkpoint) searching ``gallery`` (a folder of faces;
    None: the run's embedded test people); ``skip_bad`` leaves out gallery photos that do not decode."""
    return Retriever(run, gallery, skip_bad)
