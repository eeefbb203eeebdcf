"""A deterministic embedding for ChromaDB that needs no model download.

Chroma's default embedding function downloads an ONNX model from the
internet on first use; tierstream must run offline. :class:`HashingEmbedding`
maps a text to a fixed-size vector by *feature hashing*: every lower-cased
word and every character 3-gram of each word (with ``<`` ``>`` boundary
marks) is hashed (CRC-32, stable across processes, unlike ``hash()``) to one
of ``dim`` buckets with a hash-derived sign, weighted, and the vector is L2
normalized. Texts that share words and word fragments land close together
under cosine distance. It is no semantic model, but it is fast, free and
the same everywhere, which is what an instrumented L3 tier needs in tests,
demos and air-gapped deployments.

The class implements chromadb's ``EmbeddingFunction`` interface in full
(``name``, ``get_config``, ``build_from_config``, ``default_space``, ...) and
is registered with chromadb, so collections created with it reopen in
another process without warnings.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

_WORD = re.compile(r"\w+")

#: Name under which the function is registered with chromadb (stored in
#: collection configurations; do not change it).
EMBEDDING_NAME = "tierstream_hashing"


@register_embedding_function  # type: ignore[untyped-decorator,unused-ignore]
class HashingEmbedding(EmbeddingFunction[Documents]):
    """Feature-hashing embedding of word unigrams and character n-grams.

    ``dim`` is the vector size, ``ngram`` the character n-gram length (0 turns
    n-grams off), ``word_weight`` and ``ngram_weight`` weigh the two feature
    kinds before normalization. An empty text maps to a fixed unit vector.
    """

    def __init__(
        self,
        dim: int = 256,
        ngram: int = 3,
        word_weight: float = 1.0,
        ngram_weight: float = 0.5,
    ) -> None:
        if dim < 2:
            raise ValueError(f"dim must be at least 2, got {dim}")
        if ngram < 0:
            raise ValueError(f"ngram must be >= 0, got {ngram}")
        self.dim = dim
        self.ngram = ngram
        self.word_weight = float(word_weight)
        self.ngram_weight = float(ngram_weight)

    def __call__(self, input: Documents) -> Embeddings:
        return [self.embed_one(text) for text in input]

    def embed_one(self, text: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The unit vector of one text."""
        vec = np.zeros(self.dim, dtype=np.float32)
        dim, n = self.dim, self.ngram
        for word in _WORD.findall(unicodedata.normalize("NFKC", text).lower()):
            self._add(vec, "w:" + word, self.word_weight, dim)
            if n:
                marked = f"<{word}>"
                for i in range(max(1, len(marked) - n + 1)):
                    self._add(vec, marked[i : i + n], self.ngram_weight, dim)
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:
            vec[0] = 1.0  # cosine needs a non-zero vector; all empty texts coincide
            return vec
        vec /= norm
        return vec

    @staticmethod
    def _add(vec: np.ndarray[Any, np.dtype[np.float32]], feature: str, w: float, dim: int) -> None:
        h = zlib.crc32(feature.encode())
        vec[h % dim] += -w if h & 0x80000000 else w

    # --- chromadb's configuration interface ----------------------------------

    @staticmethod
    def name() -> str:
        return EMBEDDING_NAME

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "ngram": self.ngram,
            "word_weight": self.word_weight,
            "ngram_weight": self.ngram_weight,
        }

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> HashingEmbedding:
        return HashingEmbedding(**config)

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        unknown = set(config) - {"dim", "ngram", "word_weight", "ngram_weight"}
        if unknown:
            raise ValueError(f"unknown HashingEmbedding settings: {sorted(unknown)}")

    def validate_config_update(
        self, old_config: dict[str, Any], new_config: dict[str, Any]
    ) -> None:
        # Changing the geometry would make stored vectors incomparable to new ones.
        for key in ("dim", "ngram"):
            if key in new_config and new_config[key] != old_config.get(key):
                raise ValueError(f"HashingEmbedding {key} cannot change on an existing collection")
