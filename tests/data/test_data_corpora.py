"""Each offline corpus yields text, deterministically; the hf corpus against a stand-in module."""

from __future__ import annotations

import itertools
import re
import sys
import types

import pytest

from paralab.platform.config.schema import DataConfig
from paralab.platform.data import (
    BibleCorpus,
    DataError,
    StdlibCorpus,
    TextCorpus,
    open_corpus,
)


def test_bible_yields_the_books():
    corpus = BibleCorpus()
    books = list(corpus.documents())
    assert len(books) == 66
    assert books[0].startswith("Genesis\n\n1:1 In the beginning God created the heaven and the earth.")
    assert books[-1].startswith("Revelation")
    assert 4_000_000 < corpus.size_hint() < 4_500_000
    assert corpus.fingerprint() == BibleCorpus().fingerprint()


def test_stdlib_yields_sorted_python_sources():
    corpus = StdlibCorpus()
    names = [p.relative_to(corpus.root).as_posix() for p in corpus.files]
    assert names == sorted(names) and len(names) > 500
    assert not any("site-packages" in n for n in names)
    assert all(n.endswith(".py") for n in names)
    first = list(itertools.islice(corpus.documents(), 3))
    assert all(isinstance(doc, str) and doc for doc in first)
    assert first == list(itertools.islice(StdlibCorpus().documents(), 3))


@pytest.fixture
def text_dir(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second file\n")
    (folder / "a.txt").write_text("first file\n")
    (folder / "sub" / "c.txt").write_text("nested file\n")
    (folder / "notes.md").write_text("markdown\n")
    (folder / ".hidden").write_text("never read\n")
    return folder


def test_text_single_file(text_dir):
    corpus = open_corpus(DataConfig(source="text", path=str(text_dir / "a.txt")))
    assert list(corpus.documents()) == ["first file\n"]


def test_text_glob_is_sorted(text_dir):
    corpus = TextCorpus(str(text_dir / "**" / "*.txt"))
    assert list(corpus.documents()) == ["first file\n", "second file\n", "nested file\n"]


def test_text_directory_takes_every_visible_file(text_dir):
    corpus = TextCorpus(str(text_dir))
    assert [p.name for p in corpus.files] == ["a.txt", "b.txt", "notes.md", "c.txt"]


def test_text_fingerprint_follows_content(text_dir):
    before = TextCorpus(str(text_dir / "*.txt")).fingerprint()
    (text_dir / "a.txt").write_text("edited\n")
    assert TextCorpus(str(text_dir / "*.txt")).fingerprint() != before


@pytest.mark.parametrize("pattern,message", [
    ("missing.txt", "does not exist"),
    ("*.nothing", "matches no files"),
], ids=["missing-file", "empty-glob"])
def test_text_errors_name_the_path(tmp_path, pattern, message):
    path = str(tmp_path / pattern)
    with pytest.raises(DataError, match=rf"data.path='{re.escape(path)}'.*{message}"):
        TextCorpus(path)


@pytest.fixture
def fake_datasets(monkeypatch):
    """A stand-in `datasets` module whose load_dataset records its arguments."""
    calls = []

    def load_dataset(name, config, split, revision, streaming):
        calls.append((name, config, split, streaming) + ((revision,) if revision else ()))
        if name == "offline/ds":
            raise ConnectionError("Couldn't reach 'offline/ds' on the Hub (LocalEntryNotFoundError)")
        return iter([{"text": "row one", "id": 1}, {"text": "", "id": 2}, {"text": "row three", "id": 3}])

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    module.__spec__ = types.SimpleNamespace(name="datasets")  # find_spec() reads sys.modules
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_hf_streams_rows(fake_datasets):
    cfg = DataConfig(source="hf", path="org/ds", hf_config="en", hf_split="validation", streaming=True)
    corpus = open_corpus(cfg)
    assert list(corpus.documents()) == ["row one", "row three"]
    assert fake_datasets == [("org/ds", "en", "validation", True)]


def test_hf_revision_is_passed_and_keys_the_cache(fake_datasets):
    from paralab.platform.data.shards import cache_key

    unpinned = DataConfig(source="hf", path="org/ds")
    pinned = DataConfig(source="hf", path="org/ds", hf_revision="4f2c1e0")
    corpus = open_corpus(pinned)
    assert list(corpus.documents()) == ["row one", "row three"]
    assert fake_datasets == [("org/ds", None, "train", False, "4f2c1e0")]
    assert "org/ds@4f2c1e0" in corpus.description
    assert cache_key(pinned, corpus) != cache_key(unpinned, open_corpus(unpinned))
    other = DataConfig(source="hf", path="org/ds", hf_revision="v2")
    assert cache_key(other, open_corpus(other)) != cache_key(pinned, corpus)


def test_a_revision_for_another_source_is_refused():
    with pytest.raises(ValueError, match="hf_revision applies to source 'hf' only"):
        DataConfig(source="bible", hf_revision="main")
    with pytest.raises(ValueError, match="tokenizer_revision applies to tokenizer 'hf' only"):
        DataConfig(tokenizer_revision="main")


def test_hf_wrong_field(fake_datasets):
    corpus = open_corpus(DataConfig(source="hf", path="org/ds", hf_text_field="content"))
    with pytest.raises(DataError, match=r"data.hf_text_field='content'.*columns: \['id', 'text'\]"):
        list(corpus.documents())


def test_hf_unreachable_offline(fake_datasets):
    corpus = open_corpus(DataConfig(source="hf", path="offline/ds"))
    with pytest.raises(DataError, match=r"data.path='offline/ds' could not be loaded.*ConnectionError"):
        list(corpus.documents())


def test_hf_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # find_spec() then reports it missing
    with pytest.raises(DataError, match=r"data.source='hf'.*needs the `datasets` package"):
        open_corpus(DataConfig(source="hf", path="org/ds"))
