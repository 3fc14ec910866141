"""Tokenizers: bytes (no network, 256 symbols) or a Hugging Face tokenizer, loaded lazily.

Every tokenizer maps text to a 1-D integer array of ids in ``[0, vocab_size)`` and back.
``eos_id`` is the id appended after each document when a corpus is tokenized (see
:func:`document_separator`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from paralab.platform.errors import first_line

from .errors import DataError


class Tokenizer(Protocol):
    """What the pipeline needs from a tokenizer."""

    vocab_size: int
    """Number of ids; every id produced is below it (the model's `vocab_size` must be >= it)."""
    eos_id: int | None
    """Id that ends a document, or None when the tokenizer has none."""

    def encode(self, text: str) -> np.ndarray:
        """Text to a 1-D integer array of ids (no special tokens added)."""
        ...

    def decode(self, ids: Sequence[int] | np.ndarray | Any) -> str:
        """Ids (list, array or 1-D tensor) back to text."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able identity, written to `meta.json`; `load_tokenizer(**describe())` rebuilds it."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: 256 symbols, nothing to download.

    Id 0 (NUL, which text files practically never contain) doubles as the end-of-document
    marker. ``decode`` replaces an incomplete multi-byte character, as a window cut through
    it produces, with U+FFFD.
    """

    vocab_size = 256
    eos_id: int | None = 0

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: Sequence[int] | np.ndarray | Any) -> str:
        return bytes(np.asarray(_as_list(ids), dtype=np.uint8)).decode("utf-8", errors="replace")

    def describe(self) -> dict[str, Any]:
        return {"kind": "byte"}


class HFTokenizer:
    """A Hugging Face tokenizer by hub name or local path (``data.tokenizer_name``).

    Uses ``transformers.AutoTokenizer`` when installed, else ``tokenizers.Tokenizer``
    (which also reads a local ``tokenizer.json``). Both are imported only here, so the rest
    of paralab works without them. Offline, the hub cache is used (set ``HF_HUB_OFFLINE=1``
    to skip the network); a name that is not cached raises :class:`DataError`. ``revision``
    (``data.tokenizer_revision``) pins a hub tokenizer to a commit, tag or branch.
    """

    def __init__(self, name: str, revision: str | None = None) -> None:
        if revision and _is_local(name):
            raise DataError(f"data.tokenizer_revision={revision!r} applies to hub tokenizers; "
                            f"data.tokenizer_name={name!r} is a local path")
        self.name, self.revision = name, revision
        self._backend, self._tok = _load_hf(name, revision)
        if self._backend == "transformers":
            self.vocab_size = len(self._tok)
            self.eos_id = self._tok.eos_token_id
            # Documents are tokenized whole; silence the "longer than model_max_length" warning.
            self._tok.model_max_length = sys.maxsize
        else:
            self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
            self.eos_id = next(
                (i for t in ("<|endoftext|>", "</s>", "<eos>")
                 if (i := self._tok.token_to_id(t)) is not None),
                None,
            )

    def encode(self, text: str) -> np.ndarray:
        if self._backend == "transformers":
            ids = self._tok.encode(text, add_special_tokens=False)
        else:
            ids = self._tok.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray | Any) -> str:
        return self._tok.decode(_as_list(ids))

    def describe(self) -> dict[str, Any]:
        return {"kind": "hf", "name": self.name, **({"revision": self.revision} if self.revision else {})}


def _is_local(name: str) -> bool:
    return name.endswith(".json") or os.path.exists(os.path.expanduser(name))


def _load_hf(name: str, revision: str | None = None) -> tuple[str, Any]:
    hint = "or use data.tokenizer=byte"
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is not None:
        try:
            return "transformers", transformers.AutoTokenizer.from_pretrained(name, revision=revision)
        except Exception as e:  # OSError offline, ValueError for unknown models, ...
            raise DataError(
                f"data.tokenizer_name={name!r} could not be loaded ({first_line(e, typed=True)}); check the "
                f"name, fetch it once while online (HF_HUB_OFFLINE=1 then uses the cache), {hint}"
            ) from e
    try:
        import tokenizers
    except ImportError as e:
        raise DataError(
            f"data.tokenizer_name={name!r} needs the `transformers` or `tokenizers` package: "
            f"pip install 'paralab[hf]', {hint}"
        ) from e
    try:
        if name.endswith(".json"):
            return "tokenizers", tokenizers.Tokenizer.from_file(name)
        return "tokenizers", tokenizers.Tokenizer.from_pretrained(name, revision=revision or "main")
    except Exception as e:
        raise DataError(
            f"data.tokenizer_name={name!r} could not be loaded ({first_line(e, typed=True)}); check the "
            f"name or path, fetch it once while online, {hint}"
        ) from e


def load_tokenizer(kind: str = "byte", name: str | None = None,
                   revision: str | None = None) -> Tokenizer:
    """Build a tokenizer from `data.tokenizer` (`byte` or `hf`), `data.tokenizer_name` and
    `data.tokenizer_revision`."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "hf":
        if not name:
            raise DataError(
                "data.tokenizer=hf needs data.tokenizer_name (a Hugging Face name or a path)"
            )
        return HFTokenizer(name, revision)
    raise DataError(f"data.tokenizer={kind!r} is not one of 'byte', 'hf'")


def document_separator(tokenizer: Tokenizer) -> np.ndarray:
    """Ids appended after every document: ``[eos_id]``, or the encoding of a blank line."""
    if tokenizer.eos_id is not None:
        return np.asarray([tokenizer.eos_id], dtype=np.int64)
    return np.asarray(tokenizer.encode("\n\n"), dtype=np.int64)


def token_dtype_for(vocab_size: int) -> np.dtype:
    """Smallest on-disk dtype for ids below `vocab_size`: uint16 up to 65536 ids, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _as_list(ids: Any) -> list[int]:
    if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
        ids = ids.tolist()
    return [int(i) for i in ids]


