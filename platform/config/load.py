"""Load an experiment: schema defaults, then the YAML file, then CLI dotlist overrides.

Every failure becomes a :class:`ConfigError` whose message is one line naming the file,
the key path and what is allowed, so the CLI can print it and exit 2 without a traceback.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from paralab.platform.config.schema import ExperimentConfig
from paralab.platform.errors import first_line


class ConfigError(ValueError):
    """A bad experiment file or override; the message is meant for the user as is."""


_FLOAT = "tag:yaml.org,2002:float"
# YAML 1.2 floats: PyYAML (YAML 1.1) reads `1e-3`, `1.5e3` and `-.5` as strings, which typed
# fields convert but `list[Any]` (sweep values) keeps. Ints, booleans and `2.60.0` are unchanged.
_FLOAT_1_2 = re.compile(r"""^(?:
     [-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class _Loader(yaml.SafeLoader):
    """``safe_load`` with YAML 1.2 floats, dates left as strings (OmegaConf has no date type,
    and its own override parser reads them so), and duplicate keys refused."""

    yaml_implicit_resolvers = {
        first: [(tag, _FLOAT_1_2 if tag == _FLOAT else regexp) for tag, regexp in resolvers
                if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._paths: dict[yaml.Node, str] = {}  # nested node -> its dotted key, for messages

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """PyYAML keeps the last of two equal keys, silently dropping the first's settings."""
        path = self._paths.get(node, "")
        seen: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # `<<: *base` keys may be overridden; unhashable keys fail in PyYAML
            key = self.construct_object(key_node, deep=True)
            dotted = _key_path(path, key_node.value)  # as written
            if key in seen:
                lines = f"{seen[key].start_mark.line + 1} and {key_node.start_mark.line + 1}"
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {dotted} on lines {lines}", key_node.start_mark
                )
            seen[key] = key_node
            self._name(value_node, dotted)
        return super().construct_mapping(node, deep=deep)

    def _name(self, node: yaml.Node, path: str) -> None:
        if node in self._paths or not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return  # a scalar, or an alias already named (aliases may be recursive)
        self._paths[node] = path
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._name(item, f"{path}[{i}]")


def _yaml_problem(err: yaml.YAMLError) -> str:
    return getattr(err, "problem", None) or first_line(err)


def _read_yaml(path: Path) -> DictConfig:
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected an experiment YAML file")
    try:
        text = path.read_text(encoding="utf-8")  # whatever the locale: YAML files are UTF-8
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                          f"{err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read: {err.strerror or err}") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {_yaml_problem(err)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return OmegaConf.create(raw)
    except OmegaConfBaseException as err:  # a value OmegaConf cannot hold: `!!set {a}`
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{path}:{f' {key}:' if key else ''} {first_line(err)}") from None


def _parse_overrides(overrides: list[str]) -> DictConfig:
    """``KEY=VALUE`` items; values are read by the files' own YAML loader, so ``1e-3`` is a
    float in both."""
    layer = OmegaConf.create()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"overrides: {item!r} is not KEY=VALUE, e.g. train.lr=3e-4")
        try:
            parsed = yaml.load(value, Loader=_Loader)
        except yaml.YAMLError as err:  # "train.betas=[0.9"
            problem = _yaml_problem(err)
            raise ConfigError(f"overrides: {item!r}: the value is not valid YAML ({problem})") from None
        try:
            OmegaConf.update(layer, key, parsed)
        except OmegaConfBaseException as err:
            raise ConfigError(f"overrides: {first_line(err)}") from None
    return layer


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
            raise ConfigError(f"{source}: {f.name}.{first_line(err)}") from None
    try:
        return ExperimentConfig(**sections)
    except ValueError as err:
        raise ConfigError(f"{source}: {first_line(err)}") from None


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
    mapping, and where it has a list, a list. OmegaConf would fail on anything else with a
    message that names no key ("AnyNode is not a ListConfig")."""
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
    elif typing.get_origin(tp) in (list, tuple):
        if not (OmegaConf.is_list(value) or isinstance(value, (list, tuple))):
            example = "" if is_mapping else f", e.g. [{value}]"
            raise ConfigError(f"{source}: {path}: expected a list{example}; got {_shown(value)}")
    elif tp is str and isinstance(value, bool):
        # YAML 1.1 reads yes/no/on/off as booleans; text fields must not become 'True'.
        raise ConfigError(f"{source}: {path}: expected text, got boolean {value} (YAML reads "
                          "yes/no/on/off/true/false as booleans); quote it")
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
            message = first_line(getattr(err, "msg", None) or str(err))
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
