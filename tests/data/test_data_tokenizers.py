"""Tokenizers: byte round trip, the HF wrapper (against a stand-in module), and its errors."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from paralab.platform.data import ByteTokenizer, DataError, HFTokenizer, load_tokenizer
from paralab.platform.data.tokenizers import document_separator, token_dtype_for

TEXTS = {
    "ascii": "In the beginning God created the heaven and the earth.",
    "empty": "",
    "unicode": "naïve café — 日本語 🙂\n\ttabs",
    "nul": "a\x00b",
}


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.ndim == 1 and len(ids) == len(text.encode("utf-8"))
    assert ids.max(initial=0) < tok.vocab_size == 256
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text
    assert tok.decode(torch.from_numpy(ids.astype(np.int64))) == text


def test_byte_decode_of_a_cut_character_does_not_raise():
    ids = ByteTokenizer().encode("日")
    assert ByteTokenizer().decode(ids[:2]) == "\ufffd"


def test_separator_and_dtype():
    assert document_separator(ByteTokenizer()).tolist() == [0]
    assert token_dtype_for(256) == np.uint16
    assert token_dtype_for(65536) == np.uint16
    assert token_dtype_for(65537) == np.uint32


class _FakeAutoTokenizer:
    """The slice of transformers.AutoTokenizer that HFTokenizer uses: words as ids."""

    words = ["<eos>", "hello", "world"]
    eos_token_id = 0
    model_max_length = 512

    revisions: list = []

    @classmethod
    def from_pretrained(cls, name, revision=None):
        cls.revisions.append(revision)
        if name == "offline/model":
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return cls()

    def __len__(self):
        return len(self.words)

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return [self.words.index(w) for w in text.split()]

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids)


@pytest.fixture
def fake_transformers(monkeypatch):
    module = types.ModuleType("transformers")
    module.AutoTokenizer = _FakeAutoTokenizer
    monkeypatch.setitem(sys.modules, "transformers", module)


def test_hf_tokenizer_wraps_transformers(fake_transformers):
    tok = load_tokenizer("hf", "some/model")
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == 3 and tok.eos_id == 0
    ids = tok.encode("hello world hello")
    assert ids.tolist() == [1, 2, 1]
    assert tok.decode(ids) == "hello world hello"
    assert tok.describe() == {"kind": "hf", "name": "some/model"}


def test_hf_tokenizer_revision_is_passed_and_kept(fake_transformers, tmp_path):
    tok = load_tokenizer("hf", "some/model", "v1.0")
    assert _FakeAutoTokenizer.revisions[-1] == "v1.0"
    assert tok.describe() == {"kind": "hf", "name": "some/model", "revision": "v1.0"}
    assert load_tokenizer(**tok.describe()).revision == "v1.0"  # how meta.json rebuilds it
    local = tmp_path / "tokenizer.json"
    local.write_text("{}")
    with pytest.raises(DataError, match=r"data.tokenizer_revision='v1.0' applies to hub tokenizers"):
        load_tokenizer("hf", str(local), "v1.0")


def test_hf_tokenizer_offline_names_the_key(fake_transformers):
    with pytest.raises(DataError, match=r"data.tokenizer_name='offline/model'.*OSError"):
        load_tokenizer("hf", "offline/model")


def test_hf_tokenizer_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(DataError, match=r"data.tokenizer_name='gpt2'.*pip install"):
        load_tokenizer("hf", "gpt2")


def test_hf_tokenizer_needs_a_name():
    with pytest.raises(DataError, match="data.tokenizer_name"):
        load_tokenizer("hf", None)
