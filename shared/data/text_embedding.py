"""Event-text embeddings: a frozen local language model (CLS vector) or a hashed bag of words.

The encoder is frozen, so embedding costs no privacy budget. Vectors are cached on the site's
disk by SHA-256 of the text and reused across rounds and runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Protocol

import numpy as np

from shared.errors import InputError
from shared.io import atomic_file

_TOKEN = re.compile(r"[a-z0-9]+")


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TextEmbedder(Protocol):
    dim: int
    name: str

    def embed(self, texts: list[str]) -> np.ndarray: ...


class HashedBagOfWords:
    """Signed feature hashing of word unigrams and bigrams, L2-normalised. No model needed."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.name = f"hashed-bow-{dim}"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            tokens = _TOKEN.findall(text.lower())
            for tok in tokens + [a + "_" + b for a, b in zip(tokens, tokens[1:])]:
                h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        return out


class LocalLanguageModel:
    """CLS embedding from a BERT-like model in a local directory (`from_pretrained(path)`)."""

    def __init__(self, model_dir: str | Path, batch_size: int = 64, device: str = "cpu") -> None:
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise InputError(model_dir, "text_model", "not a local Hugging Face model directory (no config.json)")
        from transformers import AutoModel, AutoTokenizer  # heavy: import only when used

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval().to(device)
        self.device = device
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        self.name = f"hf-{hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:12]}"

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[i : i + self.batch_size], padding=True, truncation=True, max_length=64, return_tensors="pt"
                ).to(self.device)
                chunks.append(self.model(**enc).last_hidden_state[:, 0].float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)


class CachedEmbedder:
    """Wraps an embedder with an on-disk cache {sha256(text): vector} in `cache_dir/<name>.npz`."""

    def __init__(self, inner: TextEmbedder, cache_dir: Path | None) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.name = inner.name
        self.path = None if cache_dir is None else Path(cache_dir) / f"{inner.name}.npz"
        self._cache: dict[str, np.ndarray] = {}
        if self.path is not None and self.path.is_file():
            with np.load(self.path) as data:
                self._cache = dict(zip(json.loads(str(data["keys"])), data["vectors"]))
        self.computed = 0  # texts embedded by the model in this process (cache misses)

    def embed(self, texts: list[str]) -> np.ndarray:
        unique = sorted(set(texts))
        keys = {t: text_sha256(t) for t in unique}
        missing = [t for t in unique if keys[t] not in self._cache]
        if missing:
            vectors = self.inner.embed(missing)
            self._cache.update({keys[t]: v for t, v in zip(missing, vectors)})
            self.computed += len(missing)
            self._save()
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._cache[keys[t]] for t in texts]).astype(np.float32)

    def _save(self) -> None:
        if self.path is None:
            return
        keys = list(self._cache)
        with atomic_file(self.path) as handle:
            np.savez(handle, keys=json.dumps(keys), vectors=np.stack([self._cache[k] for k in keys]))


def make_text_embedder(text_model: str | None, text_dim: int, cache_dir: Path | None, device: str = "cpu") -> CachedEmbedder:
    inner: TextEmbedder = HashedBagOfWords(text_dim) if text_model is None else LocalLanguageModel(text_model, device=device)
    return CachedEmbedder(inner, cache_dir)


def text_model_dim(text_model: str | None, text_dim: int) -> int:
    """Embedding size known from config alone (the server builds the model without data)."""
    if text_model is None:
        return text_dim
    cfg_path = Path(text_model) / "config.json"
    try:
        return int(json.loads(cfg_path.read_text())["hidden_size"])
    except (OSError, KeyError, ValueError) as err:
        raise InputError(cfg_path, "hidden_size", f"cannot read the text model's size ({err})") from None
