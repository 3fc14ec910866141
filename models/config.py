"""Typed configuration of the language models.

The platform's experiment schema embeds :class:`ModelConfig` as its ``model:`` section, so
every field here is a key users can set in an experiment YAML.
"""

from __future__ import annotations

from dataclasses import dataclass

ARCHS = ("pararnn", "transformer")
MODES = ("sequential", "parallel", "triton", "auto")


@dataclass
class ModelConfig:
    """A decoder-only language model: ParaRNN blocks or the Transformer baseline."""

    arch: str = "pararnn"
    """Block type: `pararnn` (recurrent mixer) or `transformer` (causal attention baseline)."""
    cell: str = "paragru"
    """Recurrent cell of a `pararnn` model: `paragru`, `paralstm`, `linear`, or a registered custom cell."""
    vocab_size: int = 256
    """Vocabulary size; 256 for byte-level tokenisation."""
    d_model: int = 256
    """Width of the residual stream."""
    n_layers: int = 4
    """Number of blocks."""
    heads: int = 4
    """Heads of the cell's input projection (or of attention); must divide `d_model` and `d_hidden`."""
    d_hidden: int | None = None
    """State size N of the cell; defaults to `d_model`."""
    mlp_ratio: float = 4.0
    """Hidden width of each block's MLP, as a multiple of `d_model`; 0 removes the MLP."""
    conv_kernel: int = 4
    """Width of the short causal depthwise convolution before the cell; 0 disables it."""
    tie_embeddings: bool = True
    """Share the input embedding with the output head."""
    max_seq_len: int = 2048
    """Longest sequence the Transformer baseline's position embedding covers."""
    mode: str = "auto"
    """How the cell is applied over the sequence: `sequential`, `parallel`, `triton` or `auto`."""
    newton_iters: int = 3
    """Newton iterations per forward pass."""
    newton_tol: float | None = None
    """Stop Newton early once the max residual falls below this; `null` runs all iterations."""
    a_bound: float = 0.5
    """Bound on |A| and |C|, the recurrent weights; Newton's convergence depends on it."""
    newton_fallback_tol: float | None = 1e-4
    """Largest final Newton residual (times max(1, max|h|)) accepted before the call is redone sequentially; 1e-4 is a little under √eps of fp32, the recurrence's compute dtype, and a solve's output error is about its residual; `null` skips the check and its host sync."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for key in ("vocab_size", "d_model", "n_layers", "heads", "newton_iters", "max_seq_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.d_hidden is not None and self.d_hidden < 1:
            raise ValueError(f"d_hidden must be >= 1, got {self.d_hidden}")
        if self.d_model % self.heads or self.hidden % self.heads:
            raise ValueError(
                f"heads={self.heads} must divide d_model={self.d_model} and d_hidden={self.hidden}"
            )
        if self.mlp_ratio < 0 or self.conv_kernel < 0:
            raise ValueError("mlp_ratio and conv_kernel must be >= 0")
        if self.newton_tol is not None and self.newton_tol <= 0:
            raise ValueError(f"newton_tol must be > 0 or null, got {self.newton_tol}")
        if self.newton_fallback_tol is not None and self.newton_fallback_tol <= 0:
            raise ValueError(
                f"newton_fallback_tol must be > 0 or null, got {self.newton_fallback_tol}"
            )
        if None not in (self.newton_tol, self.newton_fallback_tol) and (
            self.newton_tol > self.newton_fallback_tol
        ):
            raise ValueError(
                f"newton_tol={self.newton_tol} is above newton_fallback_tol="
                f"{self.newton_fallback_tol}: a solve stopped at newton_tol would be rejected and "
                "redone sequentially every time; lower newton_tol or raise newton_fallback_tol"
            )
        if not 0 < self.a_bound:
            raise ValueError(f"a_bound must be > 0, got {self.a_bound}")

    @property
    def hidden(self) -> int:
        """The cell's state size N."""
        return self.d_hidden or self.d_model
