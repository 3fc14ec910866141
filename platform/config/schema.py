"""The experiment schema: one typed dataclass tree, which YAML files and CLI dotlists override.

Each component owns its config; ``model`` comes from :mod:`paralab.models.config`. Field
docstrings are the reference users read (``paralab validate --help`` points here).
Values are checked in ``__post_init__`` so that a bad value names its key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from paralab.models.config import ModelConfig

STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("fp32", "bf16")
SOURCES = ("bible", "stdlib", "text", "hf", "tokens")
TOKENIZERS = ("byte", "hf")


def project_dir() -> Path:
    """Where embedded state (`.paralab/`) lives: `$PARALAB_HOME`, else the current directory."""
    return Path(os.environ.get("PARALAB_HOME", Path.cwd())).resolve()


@dataclass
class DataConfig:
    """Where tokens come from and how each rank reads them."""

    source: str = "bible"
    """Corpus: `bible` (KJV, bundled), `stdlib` (Python's own sources), `text` (local files), `hf` (Hugging Face datasets), `tokens` (pre-tokenized memmap)."""
    path: str | None = None
    """Files or glob for `text`; dataset name for `hf`; `.bin` memmap for `tokens`."""
    hf_config: str | None = None
    """Hugging Face dataset config name (`hf` only)."""
    hf_split: str = "train"
    """Hugging Face split (`hf` only)."""
    hf_text_field: str = "text"
    """Column holding the text (`hf` only)."""
    streaming: bool = False
    """Stream the Hugging Face dataset instead of downloading it whole (`hf` only)."""
    max_tokens: int | None = None
    """Cap on tokens taken from the corpus; `null` takes all."""
    tokenizer: str = "byte"
    """`byte` (256 symbols, no network) or `hf` (a Hugging Face tokenizer, see `tokenizer_name`)."""
    tokenizer_name: str | None = None
    """Hugging Face tokenizer name or path when `tokenizer: hf`."""
    token_dtype: str = "uint16"
    """On-disk token type of `tokens` memmaps: `uint16` or `uint32`."""
    seq_len: int = 256
    """Tokens per training sequence."""
    val_fraction: float = 0.01
    """Fraction of the corpus held out for validation (taken from its end)."""
    cache_dir: str | None = None
    """Where tokenized shards are written (local path or s3:// URI); defaults to `.paralab/data`."""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if self.source in ("text", "hf", "tokens") and not self.path:
            raise ValueError(f"path is required when source is {self.source!r}")
        if self.token_dtype not in ("uint16", "uint32"):
            raise ValueError(f"token_dtype must be uint16 or uint32, got {self.token_dtype!r}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or null, got {self.max_tokens}")


@dataclass
class TrainConfig:
    """The optimisation loop and how it is spread over workers."""

    steps: int = 1000
    """Optimizer steps in the run."""
    batch_size: int = 16
    """Sequences per optimizer step, summed over workers and accumulation micro-steps."""
    grad_accum: int = 1
    """Micro-steps accumulated per optimizer step."""
    lr: float = 3e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 1e-4
    """Decoupled weight decay of AdamW."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    warmup_frac: float = 0.1
    """Fraction of `steps` spent in linear warm-up before the cosine decay to zero."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    z_loss: float = 0.0
    """Weight of the z-loss (log-sum-exp of the logits, squared); the paper uses 1e-4."""
    seed: int = 0
    """Seed for weights, data order and dropout."""
    strategy: str = "ddp"
    """`ddp` (replicated) or `fsdp` (FSDP2 `fully_shard`, per block)."""
    workers: int = 2
    """Ray Train workers (one process each)."""
    use_gpu: bool = False
    """Give each worker one GPU."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves for each worker."""
    precision: str = "fp32"
    """`bf16` autocast (GPU) or `fp32`."""
    cpu_offload: bool = False
    """FSDP only: keep sharded parameters and optimizer state on the CPU."""
    eval_every: int = 100
    """Validate every this many steps (and at the end)."""
    eval_batches: int = 8
    """Batches per validation."""
    log_every: int = 10
    """Report training metrics every this many steps."""
    checkpoint_every: int = 200
    """Save a checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept, besides the best by validation loss."""
    max_failures: int = 2
    """Times Ray restarts a crashed worker group from the latest checkpoint."""

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "workers", "eval_every", "eval_batches",
                    "log_every", "checkpoint_every", "keep_checkpoints")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {list(self.betas)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.z_loss < 0:
            raise ValueError("weight_decay, grad_clip and z_loss must be >= 0")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {self.max_failures}")
        if self.batch_size % (self.workers * self.grad_accum):
            raise ValueError(
                f"batch_size={self.batch_size} must be divisible by workers*grad_accum="
                f"{self.workers * self.grad_accum}"
            )
        if self.cpu_offload and self.strategy != "fsdp":
            raise ValueError("cpu_offload needs strategy: fsdp")


@dataclass
class StorageConfig:
    """Where checkpoints and run outputs go."""

    uri: str = ""
    """Local path or `s3://bucket/prefix`; empty means `.paralab/storage` (env `PARALAB_STORAGE`)."""
    endpoint_url: str | None = None
    """S3 endpoint for MinIO, SeaweedFS and the like; env `AWS_ENDPOINT_URL` is used when unset."""
    region: str | None = None
    """S3 region; env `AWS_REGION`/`AWS_DEFAULT_REGION` when unset."""

    def __post_init__(self) -> None:
        if self.uri and "://" in self.uri and not self.uri.startswith(("s3://", "file://")):
            raise ValueError(f"uri must be a local path, file:// or s3://, got {self.uri!r}")
        if self.uri.startswith("s3://") and not self.uri[5:].split("/")[0]:
            raise ValueError(f"uri has no bucket: {self.uri!r}")
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint_url must start with http:// or https://, got {self.endpoint_url!r}")


@dataclass
class TrackingConfig:
    """Where MLflow records runs."""

    uri: str = ""
    """MLflow tracking URI; empty means `sqlite:///.paralab/mlflow.db` (env `MLFLOW_TRACKING_URI`)."""
    experiment: str | None = None
    """MLflow experiment name; defaults to the experiment's `name`."""
    log_model: bool = True
    """Log the final model with `mlflow.pytorch.log_model`."""

    def __post_init__(self) -> None:
        ok = ("", "sqlite:///", "http://", "https://", "file:", "databricks")
        if self.uri and not self.uri.startswith(ok[1:]):
            raise ValueError(f"uri must be sqlite:///..., http(s)://... or file:..., got {self.uri!r}")


@dataclass
class ExperimentConfig:
    """One experiment: what to train, on what, how, and where its results go."""

    name: str = "experiment"
    """Human name; also the MLflow experiment unless `tracking.experiment` is set."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model (see `paralab.models.config.ModelConfig`)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The corpus and tokenisation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimisation loop and parallelism."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Checkpoint storage."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow tracking."""

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\"):
            raise ValueError(f"name must be non-empty without slashes, got {self.name!r}")
