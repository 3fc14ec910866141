"""The experiment schema: one typed dataclass tree, which YAML files and CLI dotlists override.

Each component owns its config; ``model`` comes from :mod:`paralab.models.config`. Field
docstrings are the reference users read; ``paralab validate FILE`` prints every key with its
resolved value.
Values are checked in ``__post_init__`` so that a bad value names its key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paralab.models.config import ModelConfig

STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("fp32", "bf16")
SOURCES = ("bible", "stdlib", "text", "hf", "tokens")
TOKENIZERS = ("byte", "hf")
SPACE_TYPES = ("grid", "choice", "uniform", "loguniform", "randint", "qrandint")
SEARCHES = ("random", "grid", "optuna")
SCHEDULERS = ("fifo", "asha", "pbt")
# Sections a sweep may not vary: they decide where the sweep's own records go.
UNSWEEPABLE = ("name", "sweep", "storage", "tracking")


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
    hf_revision: str | None = None
    """Hugging Face dataset revision: a commit hash, tag or branch (`hf` only). Pin it to
    reproduce a study: unpinned, the data cache keeps what was first downloaded, while a
    fresh machine downloads whatever the hub has then."""
    streaming: bool = False
    """Stream the Hugging Face dataset instead of downloading it whole (`hf` only)."""
    max_tokens: int | None = None
    """Cap on tokens taken from the corpus; `null` takes all."""
    tokenizer: str = "byte"
    """`byte` (256 symbols, no network) or `hf` (a Hugging Face tokenizer, see `tokenizer_name`)."""
    tokenizer_name: str | None = None
    """Hugging Face tokenizer name or path when `tokenizer: hf`."""
    tokenizer_revision: str | None = None
    """Revision (commit hash, tag or branch) of a hub tokenizer (`tokenizer: hf`); see `hf_revision`."""
    token_dtype: str = "uint16"
    """On-disk token type of `tokens` memmaps: `uint16` or `uint32`."""
    seq_len: int = 256
    """Tokens per training sequence."""
    val_fraction: float = 0.01
    """Fraction of the corpus held out for validation (taken from the end of the stream after `max_tokens`: runs that differ in `max_tokens` validate on different tokens)."""
    cache_dir: str | None = None
    """Where tokenized shards are written (local path, relative to the project, or s3:// URI); defaults to `.paralab/data`."""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if self.source in ("text", "hf", "tokens") and not self.path:
            raise ValueError(f"path is required when source is {self.source!r}")
        if self.hf_revision and self.source != "hf":
            raise ValueError(f"hf_revision applies to source 'hf' only, not {self.source!r}")
        if self.tokenizer_revision and self.tokenizer != "hf":
            raise ValueError(f"tokenizer_revision applies to tokenizer 'hf' only, not {self.tokenizer!r}")
        if self.token_dtype not in ("uint16", "uint32"):
            raise ValueError(f"token_dtype must be uint16 or uint32, got {self.token_dtype!r}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or null, got {self.max_tokens}")
        if self.cache_dir and "://" in self.cache_dir and not self.cache_dir.startswith("s3://"):
            raise ValueError(f"cache_dir must be a local path or an s3:// URI, got {self.cache_dir!r}")


@dataclass
class TrainConfig:
    """The optimisation loop and how it is spread over workers."""

    steps: int = 1000
    """Optimizer steps in the run; derived from `flops_budget` when that is set."""
    flops_budget: float | None = None
    """Training FLOPs to spend (forward + backward, every Newton iteration; the conventions of
    `paralab.models.flops`). When set it decides `steps`: the budget over one step's FLOPs,
    rounded. Swept together with the model's size, it makes an IsoFLOP study (docs/scaling.md)."""
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
    """Most recent checkpoints kept (by Ray), besides a copy of the best by validation loss."""
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
        if self.flops_budget is not None and not self.flops_budget > 0:
            raise ValueError(f"flops_budget must be > 0 or null, got {self.flops_budget}")
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
    """S3 endpoint for MinIO, SeaweedFS and the like; when unset, env `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`."""
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
class SpaceConfig:
    """One swept key's values: a list (`grid`, `choice`) or a range (the others)."""

    type: str = "choice"
    """`grid` (every value, crossed with the other grids), `choice` (one value drawn per trial), `uniform`, `loguniform`, `randint` or `qrandint` (a range)."""
    values: list[Any] | None = None
    """The values of a `grid` or `choice`."""
    low: float | None = None
    """Lower end of a range (inclusive)."""
    high: float | None = None
    """Upper end of a range (inclusive, integer ranges too)."""
    q: int | None = None
    """Step of a `qrandint`: values are multiples of `q` from `low` to `high`."""

    def problem(self) -> str | None:
        """What is wrong with this space, in words, or None. (``SweepConfig`` names the key.)"""
        if self.type not in SPACE_TYPES:
            return f"type must be one of {SPACE_TYPES}, got {self.type!r}"
        if self.type in ("grid", "choice"):
            if not self.values:
                return f"{self.type} needs a non-empty values list"
            if self.low is not None or self.high is not None or self.q is not None:
                return f"{self.type} takes values, not low/high/q"
            return None
        if self.values is not None:
            return f"{self.type} takes low and high, not values"
        if self.low is None or self.high is None:
            return f"{self.type} needs both low and high"
        if not self.low < self.high:
            return f"low must be < high, got low={self.low:g} high={self.high:g}"
        if self.type == "loguniform" and self.low <= 0:
            return f"low must be > 0 for loguniform, got {self.low:g}"
        if self.type in ("randint", "qrandint"):
            if self.low != int(self.low) or self.high != int(self.high):
                return f"low and high must be integers for {self.type}, got {self.low:g} and {self.high:g}"
        if self.type == "qrandint":
            if self.q is None or self.q < 1:
                return f"q must be an integer >= 1 for qrandint, got {self.q}"
            if self.low % self.q or self.high % self.q:
                return f"low and high must be multiples of q={self.q}, got {self.low:g} and {self.high:g}"
        elif self.q is not None:
            return f"q applies to qrandint only, not {self.type}"
        return None


@dataclass
class SearchConfig:
    """How trial configs are chosen."""

    type: str = "random"
    """`random` (grids crossed, other spaces sampled), `grid` (every combination of grid/choice values) or `optuna` (TPE, adaptive)."""
    seed: int = 0
    """Seed of the sampler: the same seed suggests the same trials."""
    startup_trials: int = 10
    """`optuna` only: trials drawn at random before TPE starts modelling results."""

    def problem(self) -> str | None:
        """What is wrong, or None (``SweepConfig.__post_init__`` raises it under ``search.``)."""
        if self.type not in SEARCHES:
            return f"type must be one of {SEARCHES}, got {self.type!r}"
        if self.startup_trials < 1:
            return f"startup_trials must be >= 1, got {self.startup_trials}"
        if not 0 <= self.seed < 2**32:  # what numpy's and optuna's samplers accept
            return f"seed must be in [0, 2**32 - 1], got {self.seed}"
        return None


@dataclass
class SchedulerConfig:
    """When trials are stopped early (ASHA) or perturbed (PBT), in optimizer steps."""

    type: str = "fifo"
    """`fifo` (run every trial to the end), `asha` (stop the worse trials at each rung) or `pbt` (population based training; refused on Ray 2.60, see docs/sweeps.md)."""
    grace_period: int = 100
    """`asha`: steps every trial runs before it can be stopped."""
    reduction_factor: float = 3.0
    """`asha`: the fraction 1/reduction_factor of trials is promoted at each rung."""
    max_t: int | None = None
    """`asha`: the last rung, in steps; `null` means `train.steps`."""
    brackets: int = 1
    """`asha`: number of brackets (1 is plain successive halving)."""
    perturbation_interval: int = 100
    """`pbt`: steps between exploit/explore decisions."""
    quantile_fraction: float = 0.25
    """`pbt`: the bottom fraction copies the top fraction's weights and config."""
    resample_probability: float = 0.25
    """`pbt`: chance that an explored value is drawn afresh from its space rather than perturbed."""

    def problem(self) -> str | None:
        """What is wrong, or None (``SweepConfig.__post_init__`` raises it under ``scheduler.``)."""
        if self.type not in SCHEDULERS:
            return f"type must be one of {SCHEDULERS}, got {self.type!r}"
        for key in ("grace_period", "brackets", "perturbation_interval"):
            if getattr(self, key) < 1:
                return f"{key} must be >= 1, got {getattr(self, key)}"
        if self.reduction_factor <= 1:
            return f"reduction_factor must be > 1, got {self.reduction_factor}"
        if self.max_t is not None and self.max_t < self.grace_period:
            return f"max_t must be >= grace_period={self.grace_period}, got {self.max_t}"
        if not 0 < self.quantile_fraction <= 0.5:
            return f"quantile_fraction must be in (0, 0.5], got {self.quantile_fraction}"
        if not 0 <= self.resample_probability <= 1:
            return f"resample_probability must be in [0, 1], got {self.resample_probability}"
        return None


@dataclass
class SweepConfig:
    """A hyperparameter sweep (`paralab sweep`): each trial is one run of the experiment with some keys changed."""

    metric: str = "val_loss"
    """Reported metric that ranks trials (`val_loss`, `val_ppl`, `loss`, `tokens_per_s`, ...)."""
    mode: str = "min"
    """`min` or `max`: which end of `metric` is best."""
    params: dict[str, SpaceConfig] = field(default_factory=dict)
    """Dotted experiment key (`train.lr`, `model.cell`) to the space of its values."""
    num_samples: int = 1
    """The trial budget: trials drawn (`random`: per combination of the grids; `optuna`: in all); `grid` takes 1."""
    max_concurrent_trials: int = 0
    """Trials run at once; 0 runs as many as the cluster's CPUs/GPUs fit."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """How trial configs are chosen."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """Early stopping or perturbation of running trials."""
    time_budget_s: float | None = None
    """Wall-clock budget of the whole sweep: no trial starts after it, running ones are stopped."""

    def __post_init__(self) -> None:
        if not self.metric:
            raise ValueError("metric must be a reported metric name, e.g. val_loss")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {self.mode!r}")
        if not self.params:
            raise ValueError("params must name at least one key to sweep, e.g. train.lr")
        for name, section in (("search", self.search), ("scheduler", self.scheduler)):
            problem = section.problem()
            if problem:
                raise ValueError(f"{name}.{problem}")
        for key, space in self.params.items():
            if key.split(".")[0] in UNSWEEPABLE:
                raise ValueError(f"params.{key}: {key.split('.')[0]} cannot be swept; "
                                 f"it decides where the sweep itself is recorded")
            problem = space.problem()
            if problem:
                raise ValueError(f"params.{key}: {problem}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.max_concurrent_trials < 0:
            raise ValueError(f"max_concurrent_trials must be >= 0, got {self.max_concurrent_trials}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0 or null, got {self.time_budget_s}")
        kinds = {key: space.type for key, space in self.params.items()}
        if self.search.type == "grid":
            ranged = [k for k, t in kinds.items() if t not in ("grid", "choice")]
            if ranged:
                raise ValueError(f"params.{ranged[0]}: search.type grid needs grid or choice "
                                 f"spaces, not {kinds[ranged[0]]}; use search.type random or optuna")
            if self.num_samples != 1:
                raise ValueError("num_samples must be 1 for search.type grid: a repeated "
                                 "config is the same run (sweep train.seed to repeat)")
        if self.search.type == "optuna":
            grids = [k for k, t in kinds.items() if t == "grid"]
            if grids:
                raise ValueError(f"params.{grids[0]}: search.type optuna samples, it does not "
                                 "cross grids; use type choice")
        if self.scheduler.type == "pbt":
            if not any(t in ("uniform", "loguniform", "choice", "randint", "qrandint")
                       for t in kinds.values()):
                raise ValueError("scheduler.type pbt needs at least one non-grid space to perturb")


SCALING_AXES = ("params", "flops", "tokens")


@dataclass
class ScalingConfig:
    """A scaling-law study over a sweep's finished trials (`paralab scaling`): for each scale
    axis x and each group, fit metric ≈ E + A·x^(−α)."""

    metric: str = "val_loss"
    """Reported metric to fit: its last logged value in each finished trial."""
    x: list[str] = field(default_factory=lambda: ["params", "flops"])
    """Scale axes: `params` (non-embedding parameters), `flops` (training FLOPs, Newton
    iterations and backward included), `tokens` (training tokens)."""
    group_by: list[str] = field(default_factory=list)
    """Dotted experiment keys (`model.cell`): one fit per distinct combination of their values."""

    def __post_init__(self) -> None:
        if not self.metric:
            raise ValueError("metric must be a reported metric name, e.g. val_loss")
        if not self.x:
            raise ValueError(f"x must name at least one scale axis of {', '.join(SCALING_AXES)}")
        for axis in self.x:
            if axis not in SCALING_AXES:
                raise ValueError(f"x: {axis!r} is not a scale axis; use {', '.join(SCALING_AXES)}")


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
    sweep: SweepConfig | None = None
    """A hyperparameter sweep over this experiment (`paralab sweep`); ignored by `paralab run`."""
    scaling: ScalingConfig | None = None
    """Power-law fits over the sweep's trials (`paralab scaling`); needs `sweep:`."""

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\"):
            raise ValueError(f"name must be non-empty without slashes, got {self.name!r}")
        if self.train.flops_budget is not None:
            self.train.steps = budget_steps(self)


def budget_steps(cfg: ExperimentConfig) -> int:
    """Optimizer steps that spend ``train.flops_budget`` on this model, data and batch."""
    from paralab.models.flops import training_flops_per_token  # late: torch, only when asked

    budget = cfg.train.flops_budget
    assert budget is not None
    per_step = training_flops_per_token(cfg.model, cfg.data.seq_len) * cfg.train.batch_size * cfg.data.seq_len
    steps = round(budget / per_step)
    if steps < 1:
        raise ValueError(
            f"train.flops_budget={budget:.3g} is less than one optimizer step of this model "
            f"({per_step:.3g} FLOPs at train.batch_size={cfg.train.batch_size}, "
            f"data.seq_len={cfg.data.seq_len}); raise the budget or shrink the step"
        )
    return steps
