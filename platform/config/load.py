"""Load an experiment: schema defaults, then the YAML file, then CLI dotlist overrides.

Every failure becomes a :class:`ConfigError` whose message is one line naming the file,
the key path and what is allowed, so the CLI can print it and exit 2 without a traceback.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from paralab.platform.config.schema import ExperimentConfig


class ConfigError(ValueError):
    """A bad experiment file or override; the message is meant for the user as is."""


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message


def _read_yaml(path: Path) -> DictConfig:
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected an experiment YAML file")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or _first_line(str(err))
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    return OmegaConf.create(raw)


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"overrides: {item!r} is not KEY=VALUE, e.g. train.lr=3e-4")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {_first_line(str(err))}") from None


def _to_objects(merged: DictConfig, source: str) -> ExperimentConfig:
    """Instantiate the dataclasses section by section, so a range check names its section."""
    sections = {}
    for f in dataclasses.fields(ExperimentConfig):
        node = merged[f.name]
        if not OmegaConf.is_config(node):
            sections[f.name] = node
            continue
        try:
            sections[f.name] = OmegaConf.to_object(node)
        except (ValueError, TypeError) as err:
            # __post_init__ messages start with the field name: "lr must be > 0, got -1".
            raise ConfigError(f"{source}: {f.name}.{_first_line(str(err))}") from None
    try:
        return ExperimentConfig(**sections)
    except ValueError as err:
        raise ConfigError(f"{source}: {_first_line(str(err))}") from None


def _check_across_sections(cfg: ExperimentConfig, source: str) -> None:
    from paralab.models.registry import registered_cells  # late: keeps the schema light

    if cfg.model.arch == "pararnn" and cfg.model.cell not in registered_cells():
        raise ConfigError(
            f"{source}: model.cell={cfg.model.cell!r} is unknown; "
            f"choose one of {sorted(registered_cells())}"
        )
    if cfg.data.tokenizer == "byte" and cfg.model.vocab_size < 256:
        raise ConfigError(
            f"{source}: model.vocab_size={cfg.model.vocab_size} is below 256, "
            "the byte tokenizer's vocabulary"
        )
    if cfg.model.arch == "transformer" and cfg.data.seq_len > cfg.model.max_seq_len:
        raise ConfigError(
            f"{source}: data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len="
            f"{cfg.model.max_seq_len}"
        )
    if cfg.model.mode == "triton" and not cfg.train.use_gpu:
        import os

        if os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError(
                f"{source}: model.mode='triton' needs train.use_gpu=true "
                "(or TRITON_INTERPRET=1 to run the kernels in Triton's CPU interpreter)"
            )


def merge(base: DictConfig, *layers: tuple[str, DictConfig]) -> DictConfig:
    """Merge override layers over ``base``, naming the failing layer in the error."""
    merged = base
    for source, layer in layers:
        for key in layer:
            section = base.get(key) if key in base else None
            value = layer[key]
            if OmegaConf.is_dict(section) and not OmegaConf.is_dict(value) and value is not None:
                raise ConfigError(
                    f"{source}: {key}: expected a mapping of keys, got {type(value).__name__} {value!r}"
                )
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None)
            message = _first_line(getattr(err, "msg", None) or str(err))
            where = f" {key}:" if key else ""
            raise ConfigError(f"{source}:{where} {message}") from None
    return merged


def load_experiment(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Resolve an experiment: schema defaults ← YAML file ← ``overrides`` (``train.lr=3e-4``)."""
    layers: list[tuple[str, DictConfig]] = []
    source = "<defaults>"
    if path is not None:
        source = str(path)
        layers.append((source, _read_yaml(Path(path))))
    if overrides:
        layers.append(("overrides", _parse_overrides(list(overrides))))
    merged = merge(OmegaConf.structured(ExperimentConfig), *layers)
    where = f"{source} + overrides" if overrides and path else ("overrides" if overrides else source)
    cfg = _to_objects(merged, where)
    _check_across_sections(cfg, where)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass tree."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML that `paralab run` accepts back."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_dict(tree: dict[str, Any]) -> ExperimentConfig:
    """Rebuild an experiment from ``to_dict`` output (as shipped to Ray workers)."""
    merged = merge(OmegaConf.structured(ExperimentConfig), ("<config>", OmegaConf.create(tree)))
    return _to_objects(merged, "<config>")
