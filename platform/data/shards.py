"""Tokenize a corpus once into cached, content-addressed shards, and open them.

``prepare(cfg)`` writes ``<cache>/<key>/{train.bin, val.bin, meta.json}``, where `key` is
``<source>-<16 hex digits>`` hashing everything that decides the tokens: the corpus's
content fingerprint, the tokenizer, `max_tokens`, `val_fraction` and the format version
(not `seq_len`, which only affects batching). A second call with the same config finds
the entry and tokenizes nothing.

Shards are flat ``np.memmap`` arrays of ``uint16`` (vocab <= 65536) or ``uint32`` ids. The
corpus's documents, each followed by the tokenizer's end-of-document separator, form one
token stream, capped at `max_tokens`; its last `val_fraction` becomes `val.bin`.

Atomicity: an entry is written under a temporary name (``.<key>.tmp-<pid>-<rand>``) and
renamed into place only when complete, so a crash leaves no entry, only debris that the
next build removes; an entry whose files disagree with its `meta.json` is discarded and
rebuilt. A per-key file lock makes concurrent ranks on one machine build once.

With ``data.cache_dir: s3://bucket/prefix`` the entry is also mirrored to
``s3://bucket/prefix/<key>/``: the machine that builds it uploads it, and the others
download it into their local cache instead of tokenizing (see :mod:`.s3`).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paralab.platform.config.schema import DataConfig, project_dir

from .batches import Batch, TokenBatches, val_batches
from .corpora import Corpus, open_corpus, sha256_file
from .errors import DamagedCopy, DataError
from .s3 import REBUILD_HINT, S3Mirror
from .tokenizers import Tokenizer, document_separator, load_tokenizer, token_dtype_for

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when the on-disk layout or the tokenization procedure changes; it is part of the key."""

TOKEN_DTYPES = ("uint16", "uint32")
_FLUSH_TOKENS = 1 << 18


@dataclass(frozen=True)
class Progress:
    """One progress report of :func:`prepare`, for a progress bar."""

    stage: str
    """`tokenize`, or `upload <file>` / `download <file>` with an S3 cache."""
    done: int
    """Units done so far."""
    total: int | None
    """Units expected, None when unknown (a streamed dataset)."""
    unit: str
    """`tokens` (with `max_tokens`), `chars` (tokenizing a whole corpus) or `bytes` (S3)."""


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class PreparedData:
    """Opened shards: read-only token arrays plus their `meta.json`."""

    key: str
    """Cache key, ``<source>-<hash>``; pass it to :func:`load_prepared` on other machines."""
    directory: Path
    """Local folder holding the shards."""
    meta: dict[str, Any]
    """Contents of `meta.json`: source, tokenizer, vocab_size, dtype, token counts, content hash."""
    train: np.ndarray
    """Training tokens, 1-D (a read-only memmap)."""
    val: np.ndarray
    """Validation tokens, 1-D: the end of the token stream."""

    @property
    def vocab_size(self) -> int:
        """Tokenizer vocabulary size; the model's `vocab_size` must be at least this."""
        return int(self.meta["vocab_size"])

    def tokenizer(self) -> Tokenizer:
        """The tokenizer that made the shards (to decode samples)."""
        return load_tokenizer(**self.meta["tokenizer"])

    def train_batches(self, seq_len: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                      seed: int = 0) -> TokenBatches:
        """This rank's resumable training iterator; see :class:`TokenBatches`."""
        return TokenBatches(self.train, seq_len, batch_size, rank=rank, world_size=world_size,
                            seed=seed)

    def val_batches(self, n: int, seq_len: int, batch_size: int, *, rank: int = 0,
                    world_size: int = 1) -> Iterator[Batch]:
        """This rank's `n` validation batches, the same on every call; see :func:`val_batches`."""
        return val_batches(self.val, seq_len, batch_size, n, rank=rank, world_size=world_size)

    def check_fits(self, seq_len: int) -> None:
        """Raise :class:`DataError` unless both splits hold at least one sequence of `seq_len`."""
        source = self.meta.get("source", self.key)
        if len(self.train) < seq_len + 1:
            raise DataError(
                f"{source} gives {len(self.train)} training tokens, fewer than one sequence of "
                f"data.seq_len={seq_len} plus one; lower data.seq_len or raise data.max_tokens"
            )
        if len(self.val) < seq_len + 1:
            raise DataError(
                f"{source} gives {len(self.val)} validation tokens, fewer than one sequence of "
                f"data.seq_len={seq_len} plus one; raise data.val_fraction or data.max_tokens, "
                "or lower data.seq_len"
            )

    def verify(self) -> bool:
        """Recompute the content hash and compare it with `meta.json` (True without a hash)."""
        expected = self.meta.get("content_sha256")
        if expected is None:
            return True
        digest = hashlib.sha256()
        for part in (self.train, self.val):
            for start in range(0, len(part), 1 << 24):
                digest.update(np.ascontiguousarray(part[start:start + (1 << 24)]).tobytes())
        return digest.hexdigest() == expected


def _local_tokenizer_content(cfg: DataConfig) -> dict[str, Any]:
    """The content hash of a tokenizer given as a local file or folder: its name alone would
    keep the tokens of an earlier file of that name. A hub name is left to its name."""
    if cfg.tokenizer != "hf" or not cfg.tokenizer_name:
        return {}
    path = Path(os.path.expanduser(cfg.tokenizer_name))
    if path.is_file():
        return {"sha256": sha256_file(path)}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {"sha256": {p.relative_to(path).as_posix(): sha256_file(p) for p in files}}
    return {}


def default_cache_root() -> Path:
    """The local cache when neither `data.cache_dir` nor `cache_root` says: `.paralab/data`."""
    return project_dir() / ".paralab" / "data"


def resolved_cache_dir(cfg: DataConfig) -> str:
    """`data.cache_dir` as this process finds it, absolute: what to give processes that may
    run in other folders or without `PARALAB_HOME` (Ray workers, trial actors)."""
    if cfg.cache_dir and cfg.cache_dir.startswith("s3://"):
        return cfg.cache_dir
    if not cfg.cache_dir:
        return str(default_cache_root())
    path = Path(os.path.expanduser(cfg.cache_dir))
    return str(path if path.is_absolute() else project_dir() / path)


def cache_identity(cfg: DataConfig, corpus: Corpus) -> dict[str, Any]:
    """Everything that decides the tokens of `cfg`; its hash is the cache key."""
    return {
        "format": FORMAT_VERSION,
        "corpus": corpus.fingerprint(),
        "tokenizer": {"kind": cfg.tokenizer,
                      "name": cfg.tokenizer_name if cfg.tokenizer == "hf" else None,
                      **_local_tokenizer_content(cfg),
                      **({"revision": cfg.tokenizer_revision} if cfg.tokenizer_revision else {})},
        "max_tokens": cfg.max_tokens,
        "val_fraction": cfg.val_fraction,
    }


def cache_key(cfg: DataConfig, corpus: Corpus) -> str:
    """``<source>-<first 16 hex digits of the sha256 of cache_identity()>``."""
    blob = json.dumps(cache_identity(cfg, corpus), sort_keys=True).encode()
    return f"{cfg.source}-{hashlib.sha256(blob).hexdigest()[:16]}"


def prepare(cfg: DataConfig, cache_root: str | os.PathLike[str] | None = None, *,
            endpoint_url: str | None = None, region: str | None = None,
            progress: ProgressFn | None = None) -> PreparedData:
    """Tokenize `cfg`'s corpus into cached shards (or find them) and open them.

    Args:
        cfg: the `data:` section of the experiment.
        cache_root: local cache folder, used unless `cfg.cache_dir` is a local path;
            defaults to :func:`default_cache_root`. With an ``s3://`` `cfg.cache_dir` it is
            where this machine keeps its copy.
        endpoint_url, region: S3 endpoint and region for an ``s3://`` cache (default: env
            `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`, and boto3's region chain).
        progress: called with :class:`Progress` reports while tokenizing or transferring.

    Returns:
        The opened shards. `tokens` sources are opened in place, without a cache entry.

    Raises:
        DataError: a missing or empty corpus, a corpus too small for one `cfg.seq_len`
            sequence, an unavailable tokenizer or dataset, an unreachable S3 cache.
    """
    if cfg.source == "tokens":
        data = open_tokens(cfg)
    else:
        corpus = open_corpus(cfg)
        key = cache_key(cfg, corpus)
        data = _cached(cfg, key, cache_root, endpoint_url, region, progress,
                       build=lambda folder: _build(cfg, corpus, key, folder, progress))
    data.check_fits(cfg.seq_len)
    return data


def load_prepared(cfg: DataConfig, key: str, cache_root: str | os.PathLike[str] | None = None, *,
                  endpoint_url: str | None = None, region: str | None = None,
                  progress: ProgressFn | None = None) -> PreparedData:
    """Open the entry `key` that :func:`prepare` made, from the local cache or the S3 mirror.

    Never tokenizes and never reads the corpus, so Ray workers can open the driver's
    shards without the corpus files. Raises :class:`DataError` when the entry is nowhere.
    """
    if cfg.source == "tokens":
        data = open_tokens(cfg)
        if data.key != key:  # the file changed since the driver opened it
            raise DataError(
                f"data.path={cfg.path!r} changed since the run prepared it (key {key}, now "
                f"{data.key}); restore it, or start the run again to train on the new tokens"
            )
    else:
        data = _cached(cfg, key, cache_root, endpoint_url, region, progress, build=None)
    data.check_fits(cfg.seq_len)
    return data


def open_tokens(cfg: DataConfig) -> PreparedData:
    """Open a pre-tokenized memmap (`data.source: tokens`) in place, split like the others.

    `data.path` is a flat `data.token_dtype` array. The vocabulary size comes from a
    `meta.json` beside it (as :func:`prepare` writes), else from the largest id (at least
    256 with the byte tokenizer).
    """
    path = Path(os.path.expanduser(cfg.path or ""))
    if not cfg.path or not path.is_file():
        raise DataError(
            f"data.path={cfg.path!r} does not exist; data.source='tokens' needs a .bin memmap of "
            f"data.token_dtype={cfg.token_dtype!r}"
        )
    dtype = parse_token_dtype(cfg.token_dtype)
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise DataError(
            f"data.path={cfg.path!r} has {size} bytes, not a multiple of {dtype.itemsize} "
            f"({dtype.name}); check data.token_dtype"
        )
    sidecar = _read_sidecar(path)
    if sidecar.get("dtype", dtype.name) != dtype.name:
        raise DataError(
            f"data.token_dtype={cfg.token_dtype!r} but {path.parent / 'meta.json'} says the tokens "
            f"are {sidecar['dtype']}; set data.token_dtype={sidecar['dtype']}"
        )
    if size == 0:
        raise DataError(f"data.path={cfg.path!r} is empty; data.source='tokens' needs tokens")
    tokens = np.memmap(path, dtype=dtype, mode="r", shape=(size // dtype.itemsize,))
    if cfg.max_tokens is not None:
        tokens = tokens[:cfg.max_tokens]
    n_train, n_val = _split(len(tokens), cfg)
    if "vocab_size" in sidecar:
        vocab_size = int(sidecar["vocab_size"])
        largest = int(tokens.max())
        if largest >= vocab_size:  # else an embedding index error on every worker, later
            raise DataError(
                f"data.path={cfg.path!r} holds token id {largest}, but "
                f"{path.parent / 'meta.json'} says vocab_size={vocab_size}; fix the sidecar or "
                "check data.token_dtype"
            )
    else:
        vocab_size = int(tokens.max()) + 1
        if cfg.tokenizer == "byte":
            vocab_size = max(vocab_size, 256)
    stat = path.stat()
    ident = (f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{dtype.name}:{cfg.max_tokens}:"
             f"{cfg.val_fraction}")
    meta = {
        "format": FORMAT_VERSION,
        "key": f"tokens-{hashlib.sha256(ident.encode()).hexdigest()[:16]}",
        "source": f"tokens: {path}",
        "tokenizer": {"kind": cfg.tokenizer, "name": cfg.tokenizer_name,
                      **({"revision": cfg.tokenizer_revision} if cfg.tokenizer_revision else {})},
        "vocab_size": vocab_size,
        "dtype": dtype.name,
        "train_tokens": n_train,
        "val_tokens": n_val,
    }
    return PreparedData(meta["key"], path.parent, meta, tokens[:n_train], tokens[n_train:])


def parse_token_dtype(name: str) -> np.dtype:
    """`uint16` or `uint32` as a numpy dtype; :class:`DataError` for anything else."""
    if name not in TOKEN_DTYPES:
        raise DataError(f"data.token_dtype={name!r} is not supported; use uint16 or uint32")
    return np.dtype(name)


# -- the cache -------------------------------------------------------------------------------


def _cached(cfg: DataConfig, key: str, cache_root: str | os.PathLike[str] | None,
            endpoint_url: str | None, region: str | None, progress: ProgressFn | None,
            build: Callable[[Path], None] | None) -> PreparedData:
    mirror = None
    if cfg.cache_dir and cfg.cache_dir.startswith("s3://"):
        mirror = S3Mirror(cfg.cache_dir, endpoint_url=endpoint_url, region=region)
        local_root = Path(cache_root) if cache_root is not None else default_cache_root()
    elif cfg.cache_dir:
        local_root = Path(resolved_cache_dir(cfg))
    else:
        local_root = Path(cache_root) if cache_root is not None else default_cache_root()
    try:
        local_root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"data.cache_dir: cannot use {local_root} as the data cache "
                        f"({err.strerror or err}); point data.cache_dir at a writable folder") from None
    final = local_root / key
    on_bytes = None
    if progress is not None:
        on_bytes = lambda stage, done, total: progress(Progress(stage, done, total, "bytes"))

    with _locked(local_root / f".{key}.lock"):
        data = _open_entry(final, key)
        if data is None:
            for debris in local_root.glob(f".{key}.*-*"):  # left by crashed writers
                shutil.rmtree(debris, ignore_errors=True)
            fetched = mirror is not None and mirror.has(key) and _fetch(
                mirror, key, final, on_bytes, rebuild=build is not None)
            if not fetched:
                if build is None:
                    where = f"{final}" + (f" or {mirror.uri}/{key}" if mirror else "")
                    raise DataError(
                        f"prepared data {key!r} is not in {where}; run prepare() first (the "
                        "driver does), or share data.cache_dir (e.g. an s3:// URI) between machines"
                    )
                _write_atomically(final, build)
            data = _open_entry(final, key)
            if data is None:
                raise DataError(f"prepared data in {final} does not match its meta.json; remove it")
        if mirror is not None and not mirror.has(key):
            mirror.upload(final, key, on_bytes)
    return data


def _open_entry(folder: Path, key: str) -> PreparedData | None:
    """Open a complete entry; discard an inconsistent one and return None."""
    if not folder.is_dir():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta["format"] != FORMAT_VERSION or meta["key"] != key:
            raise ValueError("stale format or key")
        dtype = parse_token_dtype(meta["dtype"])
        arrays = []
        for name, count in (("train.bin", meta["train_tokens"]), ("val.bin", meta["val_tokens"])):
            if count < 1 or (folder / name).stat().st_size != count * dtype.itemsize:
                raise ValueError(f"{name} does not hold {count} tokens")
            arrays.append(np.memmap(folder / name, dtype=dtype, mode="r", shape=(count,)))
    except (OSError, ValueError, KeyError, TypeError):  # DataError is a ValueError
        discarded = folder.with_name(f".{folder.name}.bad-{uuid.uuid4().hex[:8]}")
        os.rename(folder, discarded)
        shutil.rmtree(discarded, ignore_errors=True)
        return None
    return PreparedData(key, folder, meta, arrays[0], arrays[1])


def _write_atomically(final: Path, fill: Callable[[Path], None]) -> None:
    """Let `fill` write into a fresh temporary folder, then rename it to `final`."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        fill(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch(mirror: S3Mirror, key: str, final: Path,
           on_bytes: Callable[[str, int, int], None] | None, *, rebuild: bool) -> bool:
    """Download entry `key` into `final`.  A damaged copy raises, unless the caller can
    ``rebuild`` it: then it is set aside (kept, under another name) and False returned."""
    try:
        _write_atomically(final, lambda folder: _download(mirror, key, folder, on_bytes))
        return True
    except DamagedCopy as err:
        if not rebuild:
            raise
        aside = mirror.set_aside(key)
        log.warning("%s: moved it to %s; rebuilding it from the source", err, aside)
        return False


def _download(mirror: S3Mirror, key: str, folder: Path,
              on_bytes: Callable[[str, int, int], None] | None) -> None:
    mirror.download(key, folder, on_bytes)
    data = _open_entry(folder, key)
    if data is None or not data.verify():
        raise DamagedCopy(
            f"data.cache_dir={mirror.uri!r}: the copy of {key!r} there is corrupt (size or content "
            f"hash differs from its meta.json); {REBUILD_HINT}"
        )


# -- tokenizing ------------------------------------------------------------------------------


def _build(cfg: DataConfig, corpus: Corpus, key: str, folder: Path,
           progress: ProgressFn | None) -> None:
    """Tokenize `corpus` into `folder`: train.bin, val.bin, then meta.json."""
    tokenizer = load_tokenizer(cfg.tokenizer, cfg.tokenizer_name, cfg.tokenizer_revision)
    dtype = token_dtype_for(tokenizer.vocab_size)
    n_tokens, digest = _write_stream(cfg, corpus, tokenizer, dtype, folder / "tokens.bin", progress)
    if n_tokens == 0:
        raise DataError(f"data.source={cfg.source!r} gave no text ({corpus.description}); "
                        "check data.path")
    n_train, n_val = _split(n_tokens, cfg, corpus.description)
    # The validation split is the tail of the stream: copy it out, then cut it off.
    with (folder / "tokens.bin").open("r+b") as stream, (folder / "val.bin").open("wb") as val:
        stream.seek(n_train * dtype.itemsize)
        shutil.copyfileobj(stream, val)
        stream.truncate(n_train * dtype.itemsize)
        os.fsync(stream.fileno())
        val.flush()
        os.fsync(val.fileno())
    os.rename(folder / "tokens.bin", folder / "train.bin")
    _write_meta(folder, {
        "format": FORMAT_VERSION,
        "key": key,
        "source": corpus.description,
        "identity": cache_identity(cfg, corpus),
        "tokenizer": tokenizer.describe(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype.name,
        "train_tokens": n_train,
        "val_tokens": n_val,
        "content_sha256": digest,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    })


def _write_stream(cfg: DataConfig, corpus: Corpus, tokenizer: Tokenizer, dtype: np.dtype,
                  path: Path, progress: ProgressFn | None) -> tuple[int, str]:
    """Write every document's ids plus the separator to `path`; returns (count, sha256)."""
    separator = document_separator(tokenizer)
    limit = cfg.max_tokens
    if limit is not None:
        unit, total = "tokens", limit
    else:
        unit, total = "chars", corpus.size_hint()
    digest = hashlib.sha256()
    written = chars = pending_count = 0
    pending: list[np.ndarray] = []

    with path.open("wb") as out:
        def flush(report: bool) -> None:
            nonlocal written, pending_count
            if pending:
                ids = np.concatenate(pending)
                if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
                    raise DataError(f"data.tokenizer={cfg.tokenizer!r} produced ids outside "
                                    f"[0, {tokenizer.vocab_size})")
                block = ids.astype(dtype).tobytes()
                out.write(block)
                digest.update(block)
                written += ids.size
                pending.clear()
                pending_count = 0
            if report and progress is not None:
                done = written if unit == "tokens" else chars
                progress(Progress("tokenize", done, max(total, done) if total else None, unit))

        for document in corpus.documents():
            if not document:  # an empty file is no document, not a lone separator
                continue
            chars += len(document)
            ids = np.concatenate([np.asarray(tokenizer.encode(document), dtype=np.int64), separator])
            if limit is not None:
                ids = ids[:limit - written - pending_count]
            pending.append(ids)
            pending_count += ids.size
            if limit is not None and written + pending_count >= limit:
                break
            if pending_count >= _FLUSH_TOKENS:
                flush(report=True)
        flush(report=False)
        out.flush()
        os.fsync(out.fileno())
    if progress is not None:  # the last report closes the bar at 100 %
        done = written if unit == "tokens" else chars
        progress(Progress("tokenize", done, done, unit))
    return written, digest.hexdigest()


def _split(n_tokens: int, cfg: DataConfig, description: str | None = None) -> tuple[int, int]:
    n_val = max(1, round(n_tokens * cfg.val_fraction))
    if n_tokens - n_val < 1:
        raise DataError(
            f"data.source={cfg.source!r} gives only {n_tokens} token(s) ({description or cfg.path}), "
            "too few to split into training and validation; use more data (data.max_tokens)"
        )
    return n_tokens - n_val, n_val


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    # Written last: an entry without meta.json is incomplete (and never renamed into place).
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))


def _read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = path.parent / "meta.json"
    if not sidecar.is_file():
        return {}
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}
