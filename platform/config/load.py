"""Load an experiment: schema defaults, then the YAML file, then CLI dotlist overrides.

Every failure becomes a :class:`ConfigError` whose message is one line naming the file,
the key path and what is allowed, so the CLI can print it and exit 2 without a traceback.
"""

from __future__ import annotations

import dataclasses
import types
import typing
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
    except yaml.YAMLError as err:  # the value is parsed as YAML: "train.betas=[0.9"
        item = next((o for o in overrides if _bad_value(o)), "")
        problem = getattr(err, "problem", None) or _first_line(str(err))
        raise ConfigError(f"overrides: {item!r}: the value is not valid YAML ({problem})") from None


def _bad_value(item: str) -> bool:
    try:
        yaml.safe_load(item.partition("=")[2])
    except yaml.YAMLError:
        return True
    return False


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


def _key_path(parent: str, key: Any) -> str:
    """``train.lr``; a key with dots in it (a sweep's ``train.lr``) is bracketed, as in
    overrides: ``sweep.params[train.lr]``."""
    if "." in str(key):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _check_mappings(tp: Any, value: Any, path: str, source: str) -> None:
    """Where the schema has a section (a dataclass, or a dict of them), the layer must give a
    mapping. OmegaConf would fail on anything else with a message that names no key."""
    if value is None or (isinstance(value, str) and value.startswith("${")):
        return
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]  # Optional[X]
    is_mapping = OmegaConf.is_dict(value) or isinstance(value, dict)
    if dataclasses.is_dataclass(tp):
        if not is_mapping:
            names = [f.name for f in dataclasses.fields(tp)]
            keys = f" with keys among ({', '.join(names)})" if len(names) <= 6 else " of keys"
            raise ConfigError(f"{source}: {path}: expected a mapping{keys}, got {_shown(value)}")
        hints = typing.get_type_hints(tp)
        for key in value:
            if key in hints:
                _check_mappings(hints[key], value[key], _key_path(path, key), source)
    elif typing.get_origin(tp) is dict:
        item_type = typing.get_args(tp)[1]
        if not is_mapping:
            raise ConfigError(f"{source}: {path}: expected a mapping of keys, got {_shown(value)}")
        for key in value:
            _check_mappings(item_type, value[key], _key_path(path, key), source)


def _shown(value: Any) -> str:
    plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return f"{type(plain).__name__} {plain!r}"


def merge(base: DictConfig, *layers: tuple[str, DictConfig]) -> DictConfig:
    """Merge override layers over ``base``, naming the failing layer in the error."""
    merged = base
    schema = OmegaConf.get_type(base)
    for source, layer in layers:
        _check_mappings(schema, layer, "", source)
        try:
            merged = OmegaConf.merge(merged, layer)
        except (OmegaConfBaseException, TypeError) as err:
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
