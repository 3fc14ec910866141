"""prepare(): shards and meta, the content-addressed cache, atomic writes, tokens memmaps, errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading

import numpy as np
import pytest

import paralab.platform.data.shards as shards
from paralab.platform.config.schema import DataConfig
from paralab.platform.data import (
    DataError,
    cache_key,
    load_prepared,
    open_corpus,
    open_tokens,
    prepare,
)
from paralab.platform.data.shards import parse_token_dtype


def _entries(cache):
    """Names in the cache folder other than lock files."""
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))


@pytest.fixture
def count_builds(monkeypatch):
    """Counts tokenizations; prepare() should tokenize only on a cache miss."""
    calls = []
    real = shards._build

    def counted(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, "_build", counted)
    return calls


def test_prepare_writes_shards_and_meta(small_bible, cache):
    data = prepare(small_bible, cache)
    assert data.directory == cache / data.key and data.key.startswith("bible-")
    assert sorted(os.listdir(data.directory)) == ["meta.json", "train.bin", "val.bin"]
    assert data.train.dtype == np.uint16 and data.val.dtype == np.uint16
    assert (len(data.train), len(data.val)) == (19_800, 200)
    meta = json.loads((data.directory / "meta.json").read_text())
    assert meta == data.meta
    assert meta["vocab_size"] == data.vocab_size == 256
    assert meta["tokenizer"] == {"kind": "byte"}
    assert (meta["train_tokens"], meta["val_tokens"], meta["dtype"]) == (19_800, 200, "uint16")
    assert meta["source"].startswith("bible") and len(meta["content_sha256"]) == 64
    assert data.verify()
    assert data.tokenizer().decode(data.train[:20]) == "Genesis\n\n1:1 In the "


def test_validation_is_the_tail_of_the_stream(small_bible, cache):
    a = prepare(small_bible, cache)
    b = prepare(DataConfig(source="bible", max_tokens=20_000, val_fraction=0.1), cache)
    assert a.key != b.key
    assert np.array_equal(np.concatenate([a.train, a.val]), np.concatenate([b.train, b.val]))
    assert len(b.val) == 2_000


def test_prepare_reuses_the_cache(small_bible, cache, count_builds):
    first = prepare(small_bible, cache)
    second = prepare(DataConfig(source="bible", max_tokens=20_000, seq_len=32), cache)
    assert second.key == first.key and count_builds == [first.key]  # seq_len is not in the key
    assert np.array_equal(first.train, second.train)
    third = prepare(DataConfig(source="bible", max_tokens=10_000, seq_len=16), cache)
    assert third.key != first.key and len(count_builds) == 2
    assert _entries(cache) == sorted([first.key, third.key])


def test_local_cache_dir_wins_over_cache_root(small_bible, tmp_path):
    small_bible.cache_dir = str(tmp_path / "configured")
    data = prepare(small_bible, tmp_path / "ignored")
    assert data.directory.parent == tmp_path / "configured"
    assert not (tmp_path / "ignored").exists()


def test_crash_mid_write_leaves_no_entry(small_bible, cache, monkeypatch, count_builds):
    real_write_meta = shards._write_meta

    def crash(folder, meta):
        assert (folder / "train.bin").exists() and (folder / "val.bin").exists()
        raise RuntimeError("killed while writing meta.json")

    monkeypatch.setattr(shards, "_write_meta", crash)
    with pytest.raises(RuntimeError, match="killed"):
        prepare(small_bible, cache)
    assert _entries(cache) == []  # nothing half-written is left under the key

    monkeypatch.setattr(shards, "_write_meta", real_write_meta)
    data = prepare(small_bible, cache)
    assert len(count_builds) == 2 and len(data.train) == 19_800 and data.verify()


def test_hard_crash_debris_is_ignored_and_swept(small_bible, cache):
    key = cache_key(small_bible, open_corpus(small_bible))
    debris = cache / f".{key}.tmp-99999-deadbeef"  # as a killed writer leaves it
    debris.mkdir(parents=True)
    (debris / "tokens.bin").write_bytes(b"\x01\x00" * 10)
    data = prepare(small_bible, cache)
    assert len(data.train) == 19_800 and _entries(cache) == [key]


def test_inconsistent_entry_is_rebuilt(small_bible, cache, count_builds):
    data = prepare(small_bible, cache)
    with open(data.directory / "train.bin", "r+b") as f:  # as an interrupted copy leaves it
        f.truncate(1000)
    again = prepare(small_bible, cache)
    assert len(count_builds) == 2 and len(again.train) == 19_800 and again.verify()
    (again.directory / "meta.json").write_text("{not json")
    assert prepare(small_bible, cache).verify() and len(count_builds) == 3


def test_concurrent_prepare_builds_once(small_bible, cache, count_builds):
    results, errors = [], []

    def worker():
        try:
            results.append(prepare(small_bible, cache).key)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and len(count_builds) == 1


def test_progress_reports_reach_the_total(cache):
    reports = []
    prepare(DataConfig(source="bible", max_tokens=600_000, seq_len=16), cache, progress=reports.append)
    assert [r.stage for r in reports] == ["tokenize"] * len(reports) and len(reports) >= 2
    assert all(r.unit == "tokens" and r.total == 600_000 for r in reports)
    assert reports[-1].done == 600_000
    assert [r.done for r in reports] == sorted(r.done for r in reports)


def test_stdlib_and_text_sources_prepare(cache, tmp_path):
    stdlib = prepare(DataConfig(source="stdlib", max_tokens=5_000, seq_len=16), cache)
    assert stdlib.key.startswith("stdlib-") and len(stdlib.train) + len(stdlib.val) == 5_000
    (tmp_path / "a.txt").write_text("hello world " * 50)
    (tmp_path / "b.txt").write_text("second file " * 50)
    text = prepare(DataConfig(source="text", path=str(tmp_path / "*.txt"), seq_len=8,
                              val_fraction=0.1), cache)
    stream = np.concatenate([text.train, text.val])
    assert len(stream) == 600 + 1 + 600 + 1  # two documents, each followed by eos (0)
    assert text.tokenizer().decode(stream) == "hello world " * 50 + "\0" + "second file " * 50 + "\0"


def test_load_prepared_opens_by_key_without_the_corpus(tmp_path, cache):
    (tmp_path / "corpus.txt").write_text("some text to learn " * 20)
    cfg = DataConfig(source="text", path=str(tmp_path / "corpus.txt"), seq_len=8, val_fraction=0.1)
    key = prepare(cfg, cache).key
    (tmp_path / "corpus.txt").unlink()  # a worker machine without the files
    assert len(load_prepared(cfg, key, cache).train) == 343  # 381 tokens less 38 for validation
    with pytest.raises(DataError, match=r"prepared data 'text-0000' is not in .*run prepare\(\) first"):
        load_prepared(cfg, "text-0000", cache)


# -- pre-tokenized memmaps ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype,top", [("uint16", 300), ("uint32", 70_000)])
def test_tokens_memmap_is_used_in_place(tmp_path, dtype, top):
    path = tmp_path / "tokens.bin"
    tokens = (np.arange(10_000) % 256).astype(dtype)
    tokens[1234] = top - 1  # the largest id decides vocab_size
    tokens.tofile(path)
    data = prepare(DataConfig(source="tokens", path=str(path), token_dtype=dtype, seq_len=16), tmp_path)
    assert data.train.dtype == np.dtype(dtype) and data.vocab_size == top
    assert (len(data.train), len(data.val)) == (9_900, 100)
    assert np.array_equal(np.concatenate([data.train, data.val]), tokens)
    assert isinstance(data.train, np.memmap) and os.path.samefile(data.train.filename, path)
    assert os.listdir(tmp_path) == ["tokens.bin"]  # no cache entry was written


def test_tokens_memmap_reads_a_meta_beside_it(small_bible, cache):
    prepared = prepare(small_bible, cache)
    path = str(prepared.directory / "train.bin")
    data = open_tokens(DataConfig(source="tokens", path=path, max_tokens=10_000))
    assert data.vocab_size == 256 and len(data.train) + len(data.val) == 10_000
    with pytest.raises(DataError, match="data.token_dtype='uint32'.*set data.token_dtype=uint16"):
        open_tokens(DataConfig(source="tokens", path=path, token_dtype="uint32"))


# -- errors ------------------------------------------------------------------------------------


def test_tokens_errors(tmp_path):
    missing = str(tmp_path / "nope.bin")
    with pytest.raises(DataError, match=rf"data.path='{re.escape(missing)}' does not exist"):
        prepare(DataConfig(source="tokens", path=missing))
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00" * 7)
    with pytest.raises(DataError, match=r"has 7 bytes, not a multiple of 2 \(uint16\).*data.token_dtype"):
        prepare(DataConfig(source="tokens", path=str(odd)))
    cfg = DataConfig(source="tokens", path=str(odd))
    cfg.token_dtype = "int8"  # past the schema's own check
    with pytest.raises(DataError, match=r"data.token_dtype='int8' is not supported; use uint16 or uint32"):
        open_tokens(cfg)
    with pytest.raises(DataError, match="data.token_dtype='float32'"):
        parse_token_dtype("float32")


def test_empty_corpus(tmp_path, cache):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"data.source='text' gave no text .*check data.path"):
        prepare(DataConfig(source="text", path=str(tmp_path / "empty.txt")), cache)
    assert _entries(cache) == []


def test_corpus_smaller_than_one_sequence(tmp_path, cache):
    (tmp_path / "tiny.txt").write_text("x" * 100)
    cfg = DataConfig(source="text", path=str(tmp_path / "tiny.txt"), seq_len=128)
    with pytest.raises(DataError, match=r"training tokens, fewer than one sequence of data.seq_len=128"):
        prepare(cfg, cache)
    cfg = DataConfig(source="text", path=str(tmp_path / "tiny.txt"), seq_len=16)
    with pytest.raises(DataError, match=r"validation tokens.*raise data.val_fraction"):
        prepare(cfg, cache)


# -- what the key and the cache answer for -------------------------------------------------------


def test_a_tokens_file_changed_after_prepare_is_refused_on_the_workers(tmp_path):
    """Workers open `tokens` sources in place, by the key the driver prepared."""
    path = tmp_path / "tokens.bin"
    (np.arange(10_000) % 256).astype("uint16").tofile(path)
    cfg = DataConfig(source="tokens", path=str(path), seq_len=16)
    key = prepare(cfg).key
    assert load_prepared(cfg, key).key == key
    (np.arange(10_000) % 200).astype("uint16").tofile(path)
    os.utime(path, ns=(1, 1))  # another write, whatever the clock's resolution
    with pytest.raises(DataError, match=r"data.path=.* changed since the run prepared it"):
        load_prepared(cfg, key)


def test_tokens_key_counts_the_dtype_and_ids_are_held_to_the_sidecar(tmp_path):
    path = tmp_path / "tokens.bin"
    (np.arange(20_000) % 150).astype("uint16").tofile(path)
    as16 = open_tokens(DataConfig(source="tokens", path=str(path), token_dtype="uint16"))
    as32 = open_tokens(DataConfig(source="tokens", path=str(path), token_dtype="uint32"))
    assert as16.key != as32.key, "one file read two ways is two datasets"
    (tmp_path / "meta.json").write_text(json.dumps({"vocab_size": 100, "dtype": "uint16"}))
    with pytest.raises(DataError, match=r"holds token id 149, but .*meta.json says vocab_size=100"):
        open_tokens(DataConfig(source="tokens", path=str(path)))


def test_a_local_tokenizer_file_is_keyed_by_its_content(tmp_path, small_bible):
    tok = tmp_path / "tok.json"
    tok.write_text('{"version": 1}')
    cfg = DataConfig(source="bible", tokenizer="hf", tokenizer_name=str(tok), max_tokens=1000)
    corpus = open_corpus(cfg)
    first = cache_key(cfg, corpus)
    tok.write_text('{"version": 2}')
    assert cache_key(cfg, corpus) != first, "a new tokenizer under the same name reused old tokens"


def test_cache_dir_relative_to_the_project_and_refused_when_unusable(small_bible, tmp_path, monkeypatch):
    monkeypatch.setenv("PARALAB_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    data = prepare(DataConfig(**{**small_bible.__dict__, "cache_dir": "shards"}))
    assert data.directory.parent == tmp_path / "home" / "shards", "not the cwd: Ray workers run elsewhere"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(DataError, match=r"data.cache_dir: cannot use .*a-file as the data cache"):
        prepare(DataConfig(**{**small_bible.__dict__, "cache_dir": str(blocker)}))


def test_a_hub_tokenizer_is_keyed_by_its_revision():
    cfg = DataConfig(source="bible", tokenizer="hf", tokenizer_name="org/tok", max_tokens=1000)
    corpus = open_corpus(cfg)
    keys = {cache_key(dataclasses.replace(cfg, tokenizer_revision=r), corpus) for r in (None, "v1", "v2")}
    assert len(keys) == 3
