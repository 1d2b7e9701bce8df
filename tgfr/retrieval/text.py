"""Frozen sentence-encoder features, computed once per caption and kept on disk.

X-Modal aligns faces to sentence-transformer embeddings. The encoder (the offline MiniLM
``all-MiniLM-L6-v2`` by default, or any local Hugging Face text model) stays frozen and
only the projection after it trains, so every caption's features are a constant: they are
computed once, in batches, and cached (``text_features_<key>.pt``, keyed by the model
directory and the caption list). Training then costs no transformer pass at all, which
is what lets the quick preset train on two CPU cores.

Features of one caption: the sentence vector (mean of the token states over real words,
L2-normalised, as sentence-transformers' mean pooling) and the token states themselves
(float16, at most ``max_tokens``) for TGFR's word-region score.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..atomic import read_cache, save_tensors
from ..models.text import HFTextEncoder, minilm_path


@dataclass
class CaptionBatch:
    """Features of some captions: ``sentences`` float32 [B, H], ``tokens`` float32 [B, T, H] and their
    ``mask`` bool [B, T] (T: the longest caption of the batch)."""

    sentences: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor


@dataclass
class TextFeatures:
    """``sentences`` float32 [N, H], ``tokens`` float16 [N, T, H], ``mask`` bool [N, T];
    ``index`` maps each caption to its row."""

    sentences: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    index: dict[str, int]

    def batch(self, captions) -> CaptionBatch:
        rows = torch.tensor([self.index[c] for c in captions], dtype=torch.long)
        mask = self.mask[rows]
        length = max(int(mask.sum(1).max()), 1)
        return CaptionBatch(self.sentences[rows], self.tokens[rows, :length].float(), mask[:, :length])


def resolve_text_encoder(name: str) -> Path:
    """``"minilm"`` (the packaged offline MiniLM) or a local Hugging Face model directory."""
    if name == "minilm":
        return minilm_path()
    path = Path(name)
    if not path.is_dir():
        raise FileNotFoundError(f"text_encoder must be 'minilm' or a local model directory, got {name!r}")
    return path


class SentenceEncoder:
    """A frozen local Hugging Face text model giving :class:`TextFeatures`."""

    def __init__(self, name: str = "minilm", max_tokens: int = 32):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network (read when transformers loads)
        self.path = resolve_text_encoder(name)
        self.max_tokens = max_tokens
        self.encoder = HFTextEncoder(self.path, max_length=max_tokens + 2).eval()
        self.output_size = self.encoder.output_size

    @torch.no_grad()
    def __call__(self, captions, batch_size: int = 256) -> TextFeatures:
        captions = list(dict.fromkeys(captions))  # unique, in order
        empty = [c for c in captions if not c.strip()]
        if empty:
            raise ValueError("text queries must contain at least one word, got an empty one")
        sentences = torch.empty(len(captions), self.output_size)
        tokens = torch.zeros(len(captions), self.max_tokens, self.output_size, dtype=torch.float16)
        mask = torch.zeros(len(captions), self.max_tokens, dtype=torch.bool)
        for start in range(0, len(captions), batch_size):
            hidden, words = self.encoder(captions[start:start + batch_size])
            pooled = (hidden * words[..., None]).sum(1) / words.sum(1, keepdim=True)
            stop = start + hidden.shape[0]
            sentences[start:stop] = F.normalize(pooled, dim=1)
            # drop the special tokens: the word-region score attends over real words only
            for row, (h, m) in enumerate(zip(hidden, words), start=start):
                real = h[m][: self.max_tokens]
                tokens[row, : real.shape[0]] = real.half()
                mask[row, : real.shape[0]] = True
        return TextFeatures(sentences, tokens, mask, {c: i for i, c in enumerate(captions)})


def cached_text_features(encoder_name: str, captions, cache_dir, max_tokens: int = 32) -> TextFeatures:
    """Features of ``captions`` from ``cache_dir`` if computed before, else computed and saved."""
    captions = list(dict.fromkeys(captions))
    key = hashlib.sha256(json.dumps([str(resolve_text_encoder(encoder_name)), max_tokens, captions])
                         .encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"text_features_{key}.pt"
    state = read_cache(path, ("sentences", "tokens", "mask", "captions"))
    if state is not None:
        return TextFeatures(state["sentences"], state["tokens"], state["mask"],
                            {c: i for i, c in enumerate(state["captions"])})
    features = SentenceEncoder(encoder_name, max_tokens)(captions)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors({"sentences": features.sentences, "tokens": features.tokens, "mask": features.mask,
                  "captions": captions}, path)
    return features
