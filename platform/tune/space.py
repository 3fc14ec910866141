"""Sweep spaces: from the YAML's ``sweep.params`` to Ray Tune domains, trial configs and names.

A sweep param is a dotted experiment key (``train.lr``) and a :class:`SpaceConfig`. A trial's
values are a flat mapping of those keys, ``{"train.lr": 3e-3, "model.cell": "paralstm"}``,
which :func:`apply` writes into the experiment tree. Nothing here starts Ray.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from paralab.platform.config.load import ConfigError, load_experiment
from paralab.platform.config.schema import SpaceConfig, SweepConfig

ENUMERABLE = ("grid", "choice")
MAX_CHECKED_COMBINATIONS = 512
"""Grids up to this size are validated combination by combination before a sweep starts."""


def plain(value: Any) -> Any:
    """A YAML- and JSON-safe Python value (Tune hands back numpy scalars)."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def to_domain(space: SpaceConfig, search: str) -> Any:
    """The Ray Tune domain of a space. Under ``search: grid`` a ``choice`` is crossed too."""
    from ray import tune

    values = [plain(v) for v in space.values or []]
    if space.type == "grid" or (space.type == "choice" and search == "grid"):
        return tune.grid_search(values)
    if space.type == "choice":
        return tune.choice(values)
    if space.type == "uniform":
        return tune.uniform(space.low, space.high)
    if space.type == "loguniform":
        return tune.loguniform(space.low, space.high)
    if space.type == "randint":  # inclusive here, exclusive upper end in Tune
        return tune.randint(int(space.low), int(space.high) + 1)
    if space.type == "qrandint":
        if space.q == 1:  # Tune's qrandint leaves out its upper end when q is 1
            return tune.randint(int(space.low), int(space.high) + 1)
        return tune.qrandint(int(space.low), int(space.high), space.q)
    raise ValueError(f"unknown space type {space.type!r}")


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """Tune's ``param_space``: one flat entry per swept key, so a trial's config is its values."""
    return {key: to_domain(space, sweep.search.type) for key, space in sweep.params.items()}


def probe_values(space: SpaceConfig) -> list[Any]:
    """Values that stand for a space when checking it against the schema: the ends and a middle."""
    if space.type in ENUMERABLE:
        return [plain(v) for v in space.values or []]
    low, high = space.low, space.high
    if space.type == "uniform":
        return [low, high, (low + high) / 2]
    if space.type == "loguniform":
        return [low, high, math.sqrt(low * high)]
    return [int(low), int(high)]


def override(key: str, value: Any) -> str:
    """``key=value`` as a loader override; JSON is valid YAML, so the value keeps its type."""
    return f"{key}={json.dumps(plain(value))}"


_SOURCE = re.compile(r"^.*?(?:overrides|<config>): ")


def reason(err: ConfigError) -> str:
    """The loader's message without the file/overrides prefix it starts with."""
    return _SOURCE.sub("", str(err), count=1)


def check_params(path: str | Path, overrides: list[str] | tuple[str, ...], sweep: SweepConfig) -> None:
    """Apply sample values of every param through the loader; a bad key or value is a ConfigError.

    Every value of a grid or choice is tried, and the ends (and middle) of a range, so a key
    missing from the schema, a value of the wrong type or out of range fails here, before
    anything starts. Small grids are also checked combination by combination, which catches
    values that are fine alone but clash (``model.heads`` not dividing ``model.d_model``).
    """
    base = list(overrides)
    for key, space in sweep.params.items():
        for value in probe_values(space):
            try:
                load_experiment(path, [*base, override(key, value)])
            except ConfigError as err:
                raise ConfigError(
                    f"{path}: sweep.params.{key}={json.dumps(plain(value))}: {reason(err)}"
                ) from None
    enumerable = {k: s for k, s in sweep.params.items() if s.type in ENUMERABLE}
    if len(enumerable) < 2:
        return
    combos = math.prod(len(s.values or []) for s in enumerable.values())
    if combos > MAX_CHECKED_COMBINATIONS:
        return
    keys = list(enumerable)
    for values in itertools.product(*(probe_values(enumerable[k]) for k in keys)):
        try:
            load_experiment(path, [*base, *(override(k, v) for k, v in zip(keys, values))])
        except ConfigError as err:
            combo = " ".join(f"{k}={json.dumps(plain(v))}" for k, v in zip(keys, values))
            raise ConfigError(f"{path}: sweep.params combination {combo}: {reason(err)}") from None


def apply(tree: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an experiment tree (``to_dict`` output) with each dotted key set to its value.

    A mapping value is merged into the section it names, as the same ``key=value`` override
    is: ``model: {n_layers: 3}`` changes the layers and keeps the file's other model keys.
    """
    out = copy.deepcopy(dict(tree))
    for key, value in values.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        _set(node, leaf, plain(value))
    return out


def _set(node: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict) and isinstance(node.get(key), dict):
        for sub, item in value.items():
            _set(node[key], sub, item)
    else:
        node[key] = value


def _short(key: str, keys: list[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    return leaf if sum(k.rsplit(".", 1)[-1] == leaf for k in keys) == 1 else key


def format_value(value: Any) -> str:
    value = plain(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def trial_label(values: Mapping[str, Any]) -> str:
    """A readable name from a trial's swept values: ``cell=paralstm,newton_iters=2``."""
    keys = list(values)
    return ",".join(f"{_short(k, keys)}={format_value(values[k])}" for k in keys)


def expand(sweep: SweepConfig) -> list[dict[str, Any]]:
    """The trials' values in the order Tune creates them.

    ``grid`` and ``random`` searches are listed exactly (same seed, same samples). For
    ``optuna`` these are the sampler's first ``num_samples`` suggestions before any result
    is known; once results come in, TPE adapts and later suggestions differ.
    """
    space = param_space(sweep)
    if sweep.search.type == "optuna":
        return optuna_suggestions(sweep, sweep.num_samples)
    from ray.tune.search.basic_variant import _BackwardsCompatibleNumpyRng
    from ray.tune.search.variant_generator import generate_variants

    # BasicVariantGenerator draws `num_samples` passes over the grid from one seeded stream.
    rng = _BackwardsCompatibleNumpyRng(sweep.search.seed)
    trials = []
    for _ in range(sweep.num_samples):
        for _, resolved in generate_variants(space, random_state=rng):
            trials.append({k: plain(resolved[k]) for k in sweep.params})
    return trials


def optuna_sampler(sweep: SweepConfig):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.samplers.TPESampler(seed=sweep.search.seed, n_startup_trials=sweep.search.startup_trials)


def optuna_search(sweep: SweepConfig):
    """Tune's OptunaSearch with a seeded TPE sampler."""
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(sampler=optuna_sampler(sweep), metric=sweep.metric, mode=sweep.mode)


def optuna_suggestions(sweep: SweepConfig, count: int) -> list[dict[str, Any]]:
    """The first ``count`` configs a fresh seeded searcher suggests, with no results reported."""
    searcher = optuna_search(sweep)
    searcher.set_search_properties(sweep.metric, sweep.mode, param_space(sweep))
    suggestions = []
    for index in range(count):
        config = searcher.suggest(f"dry_{index}")
        suggestions.append({k: plain(config[k]) for k in sweep.params})
    return suggestions
