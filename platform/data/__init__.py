"""The data pipeline: corpora -> tokenizer -> cached memmap shards -> per-rank batches.

Typical use in a Ray Train loop (see docs/data.md)::

    data = prepare(cfg.data, endpoint_url=cfg.storage.endpoint_url)  # driver: tokenize once
    # worker: open the driver's shards by key, then read this rank's batches
    data = load_prepared(cfg.data, key, endpoint_url=cfg.storage.endpoint_url)
    batches = data.train_batches(cfg.data.seq_len, per_rank_batch, rank=rank,
                                 world_size=world_size, seed=cfg.train.seed)
    batches.load_state_dict(checkpoint["data"])  # when resuming
"""

from .batches import Batch, TokenBatches, val_batches
from .corpora import BibleCorpus, Corpus, HFCorpus, StdlibCorpus, TextCorpus, open_corpus
from .errors import DataError
from .s3 import S3Mirror
from .shards import (
    FORMAT_VERSION,
    PreparedData,
    Progress,
    ProgressFn,
    cache_key,
    default_cache_root,
    load_prepared,
    open_tokens,
    prepare,
    resolved_cache_dir,
)
from .tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer, token_dtype_for

__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "BibleCorpus",
    "ByteTokenizer",
    "Corpus",
    "DataError",
    "HFCorpus",
    "HFTokenizer",
    "PreparedData",
    "Progress",
    "ProgressFn",
    "S3Mirror",
    "StdlibCorpus",
    "TextCorpus",
    "TokenBatches",
    "Tokenizer",
    "cache_key",
    "default_cache_root",
    "resolved_cache_dir",
    "load_prepared",
    "load_tokenizer",
    "open_corpus",
    "open_tokens",
    "prepare",
    "token_dtype_for",
    "val_batches",
]
