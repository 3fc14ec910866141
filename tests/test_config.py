"""The experiment schema: defaults, merging, and one-line errors for bad input."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from paralab.platform.cli import main
from paralab.platform.config.load import (
    ConfigError,
    _Loader,
    from_dict,
    load_experiment,
    to_dict,
)
from paralab.platform.config.schema import ExperimentConfig


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = write(tmp_path, """
        name: t
        train: {lr: 1.0e-3, steps: 50}
        model: {cell: paralstm}
    """)
    cfg = load_experiment(path, ["train.lr=3e-4", "model.d_model=64", "model.heads=2"])
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.train.lr == pytest.approx(3e-4)  # the override wins over the file
    assert cfg.train.steps == 50
    assert cfg.model.cell == "paralstm" and cfg.model.d_model == 64
    assert cfg.train.weight_decay == ExperimentConfig().train.weight_decay  # schema default


def test_dict_round_trip():
    cfg = load_experiment(None, ["name=x", "train.betas=[0.8,0.9]"])
    again = from_dict(to_dict(cfg))
    assert again == cfg
    assert again.train.betas == [0.8, 0.9]


def test_empty_file_means_all_defaults(tmp_path):
    assert load_experiment(write(tmp_path, "")) == ExperimentConfig()


# (case id, YAML text or None for "no file", overrides, words the one-line error must contain)
BAD = [
    ("typo", "train: {lrr: 1}", [], ["train.lrr", "Did you mean", "'lr'"]),
    ("wrong-type", "train: {lr: fast}", [], ["train.lr", "fast"]),
    ("negative-lr", "train: {lr: -0.1}", [], ["train.lr", "> 0"]),
    ("unknown-cell", "model: {cell: paragruu}", [], ["model.cell", "paragruu", "paragru"]),
    ("bad-storage-uri", "storage: {uri: 'ftp://x/y'}", [], ["storage.uri", "s3://"]),
    ("storage-no-bucket", "storage: {uri: 's3:///prefix'}", [], ["storage.uri", "bucket"]),
    ("bad-endpoint", "storage: {endpoint_url: 'localhost:9000'}", [], ["storage.endpoint_url", "http://"]),
    ("bad-tracking-uri", "tracking: {uri: 'mysql//x'}", [], ["tracking.uri"]),
    ("missing-file", None, [], ["file not found"]),
    ("yaml-syntax", "train: {lr: 1\nmodel: [", [], ["invalid YAML", ":"]),
    ("top-level-list", "- a\n- b", [], ["top level must be a mapping"]),
    ("section-scalar", "model: 5", [], ["model", "mapping"]),
    ("null-required", "train: {steps: null}", [], ["train.steps", "None"]),
    ("unknown-section", "trian: {lr: 1}", [], ["trian"]),
    ("unknown-mode", "model: {mode: fastest}", [], ["model.mode", "sequential"]),
    ("unknown-strategy", "train: {strategy: zero3}", [], ["train.strategy", "fsdp"]),
    ("heads-divide", "model: {d_model: 10, heads: 4}", [], ["model.heads", "divide"]),
    ("newton-tol-above-fallback", "model: {newton_iters: 10, newton_tol: 1.0e-3}", [],
     ["newton_tol=0.001 is above newton_fallback_tol=0.0001", "redone sequentially"]),
    ("batch-divisible", "train: {batch_size: 5, workers: 2}", [], ["train.batch_size", "divisible"]),
    ("tuple-length", "train: {betas: [0.9, 0.95, 0.99]}", [], ["betas"]),
    ("text-needs-path", "data: {source: text}", [], ["data.path", "required"]),
    ("vocab-below-bytes", "model: {vocab_size: 100}", [], ["model.vocab_size", "256"]),
    ("override-typo", "", ["train.setps=3"], ["train.setps", "steps"]),
    ("override-no-equals", "", ["train.lr"], ["train.lr", "KEY=VALUE"]),
    ("override-wrong-type", "", ["model.n_layers=two"], ["model.n_layers", "two"]),
    ("name-slash", "name: a/b", [], ["name", "slashes"]),
    ("nested-section-scalar", "sweep: {search: random, params: {train.lr: {type: grid, values: [1]}}}",
     [], ["sweep.search", "mapping", "type", "str 'random'"]),
    ("sweep-param-list", "sweep: {params: {train.lr: [0.001, 0.003]}}", [],
     ["sweep.params[train.lr]", "mapping", "values", "list"]),
    ("override-section-scalar", "", ["train=3"], ["train", "mapping", "int 3"]),
    ("override-bad-yaml", "", ["train.betas=[0.9"], ["'train.betas=[0.9'", "not valid YAML"]),
    ("duplicate-section", "name: dup\ntrain:\n  lr: 0.5\ntrain:\n  steps: 5", [],
     [":4:1:", "duplicate key train on lines 2 and 4"]),
    ("duplicate-nested-key", "train:\n  lr: 0.5\n  steps: 3\n  lr: 0.1", [],
     ["duplicate key train.lr on lines 2 and 4"]),
    ("duplicate-flow-key", "model: {cell: paragru, d_model: 64, cell: paralstm}", [],
     ["duplicate key model.cell on lines 1 and 1"]),
    ("duplicate-sweep-param", "sweep:\n  params:\n    train.lr: {type: choice, values: [1]}\n"
     "    train.lr: {type: grid, values: [2]}", [],
     ["duplicate key sweep.params[train.lr] on lines 3 and 4"]),
    ("override-duplicate-key", "", ["train={lr: 1, lr: 2}"], ["not valid YAML", "duplicate key lr"]),
    ("list-expected", "scaling: {group_by: model.cell}", [],
     ["scaling.group_by: expected a list, e.g. [model.cell]; got str 'model.cell'"]),
    ("sweep-values-scalar", "sweep: {params: {train.lr: {type: choice, values: 0.001}}}", [],
     ["sweep.params[train.lr].values: expected a list, e.g. [0.001]"]),
    ("list-given-mapping", "train: {betas: {a: 0.9}}", [], ["train.betas: expected a list; got dict"]),
    ("override-list-expected", "", ["train.betas=0.9"],
     ["train.betas: expected a list, e.g. [0.9]; got float 0.9"]),
    ("unsupported-value", "name: !!set {a: null}", [], ["name:", "set"]),
    ("yaml-bool-for-text", "name: no", [], ["name: expected text, got boolean False", "quote it"]),
    ("override-bool-for-text", "", ["tracking.experiment=off"], ["tracking.experiment: expected text"]),
]


@pytest.mark.parametrize("text,overrides,words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_gives_one_line_naming_the_key(tmp_path, text, overrides, words):
    path = tmp_path / "missing.yaml" if text is None else write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message or "overrides" in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize("text,overrides,words", [c[1:] for c in BAD[:6]], ids=[c[0] for c in BAD[:6]])
def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path, capsys, text, overrides, words):
    path = tmp_path / "missing.yaml" if text is None else write(tmp_path, text)
    assert main(["validate", str(path), *overrides]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1, err


def test_cli_subprocess_exit_code(tmp_path):
    path = write(tmp_path, "train: {lr: -1}")
    proc = subprocess.run([sys.executable, "-m", "paralab.platform.cli", "validate", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "train.lr" in proc.stderr


def test_validate_prints_resolved_config(tmp_path, capsys):
    path = write(tmp_path, "name: tour\ntrain: {steps: 7}")
    assert main(["validate", str(path), "model.cell=paralstm"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "cell: paralstm" in out and "valid" in out


def test_error_text_with_brackets_is_printed_verbatim(tmp_path, capsys):
    # Worker errors quote paths like "[/src/gloo/pair.cc:537]": never read as rich markup.
    path = write(tmp_path, "name: x")
    assert main(["validate", str(path), "train.lr=[/src/gloo/pair.cc:537]"]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "[/src/gloo/pair.cc:537]" in err.replace("'", "").replace('"', "")


def test_a_flops_budget_decides_the_steps(tmp_path):
    """train.flops_budget buys round(budget / one step's FLOPs) steps, whatever train.steps
    says; the derived steps survive the trip to Ray workers (to_dict, from_dict)."""
    from paralab.models.flops import training_flops_per_token

    path = write(tmp_path, """
        model: {d_model: 32, n_layers: 1, heads: 2}
        data: {seq_len: 64}
        train: {batch_size: 8, workers: 1, steps: 7, flops_budget: 1.0e+11}
    """)
    cfg = load_experiment(path)
    per_step = training_flops_per_token(cfg.model, 64) * 8 * 64
    assert cfg.train.steps == round(1e11 / per_step) and cfg.train.steps != 7
    assert from_dict(to_dict(cfg)).train.steps == cfg.train.steps
    wider = load_experiment(path, ["model.d_model=64"])
    assert wider.train.steps < cfg.train.steps  # the same budget buys a larger model fewer steps
    assert load_experiment(path, ["train.flops_budget=null"]).train.steps == 7


@pytest.mark.parametrize(
    ("value", "message"),
    [("1e3", "train.flops_budget=1e+03 is less than one optimizer step of this model"),
     ("-1", "train.flops_budget must be > 0 or null, got -1.0")],
)
def test_a_bad_flops_budget_is_one_line(value, message):
    with pytest.raises(ConfigError, match=message.replace("+", r"\+").replace(".", r"\.")):
        load_experiment(None, [f"train.flops_budget={value}"])


def test_the_reviewers_duplicate_key_case_fails_in_the_cli(tmp_path, capsys):
    """PyYAML keeps the last of two `train:` sections; the first one's lr was silently lost."""
    path = write(tmp_path, "name: dup\ntrain:\n  lr: 0.5\ntrain:\n  steps: 5\n", "dup.yaml")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}:4:1: invalid YAML: duplicate key train on lines 2 and 4"


def test_merge_keys_may_be_overridden(tmp_path):
    """`<<: *anchor` then the same key is YAML's override idiom, not a duplicate."""
    path = write(tmp_path, """
        train:
          <<: {steps: 5, lr: 0.5}
          lr: 0.1
    """)
    cfg = load_experiment(path)
    assert cfg.train.steps == 5 and cfg.train.lr == pytest.approx(0.1)


# (YAML scalar, value it reads as): YAML 1.2 floats; ints, booleans and strings as before.
SCALARS = [
    ("1e-3", 1e-3), ("1E5", 1e5), (".5", 0.5), ("-.5", -0.5), ("-2.5e+4", -2.5e4),
    ("1.5e3", 1500.0), ("3.0e-3", 3e-3), (".inf", math.inf), ("-.inf", -math.inf),
    ("1", 1), ("1_000", 1000), ("0x1F", 31), ("-7", -7), ("true", True), ("yes", True),
    ("off", False), ("2.60.0", "2.60.0"), ("e5", "e5"), ("1e", "1e"), ("'1e-3'", "1e-3"),
    ("2024-05-01", "2024-05-01"),
]


@pytest.mark.parametrize("text,value", SCALARS, ids=[s[0] for s in SCALARS])
def test_scalars_read_alike_in_files_and_overrides(tmp_path, text, value):
    """`values: [1e-3]` is list[Any]: OmegaConf does not convert it, so the loader must."""
    path = write(tmp_path, f"sweep: {{params: {{train.lr: {{type: choice, values: [{text}]}}}}}}")
    from_file = load_experiment(path).sweep.params["train.lr"].values
    from_override = load_experiment(None, [f"sweep.params[train.lr].values=[{text}]"])
    for got in (from_file, from_override.sweep.params["train.lr"].values):
        assert got == [value] and type(got[0]) is type(value), (text, got)


def test_nan_is_a_float():
    assert math.isnan(yaml.load("x: .nan", Loader=_Loader)["x"])


def test_a_date_like_name_is_a_string(tmp_path):
    """PyYAML made it a datetime.date, which OmegaConf refused with a traceback."""
    assert load_experiment(write(tmp_path, "name: 2024-05-01")).name == "2024-05-01"
    assert load_experiment(None, ["name=2024-05-01"]).name == "2024-05-01"


def test_overrides_give_float_sweep_values():
    cfg = load_experiment(None, ["sweep.params[train.lr].values=[1e-3,2e-3]"])
    assert cfg.sweep.params["train.lr"].values == [1e-3, 2e-3]


ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "experiments").rglob("*.yaml"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(md, i, block) for md in DOCS
          for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", md.read_text(), re.S))]


def _agree(new: Any, old: Any) -> bool:
    """Equal, except where YAML 1.1 read a float (`1e-3`) as a string."""
    if isinstance(old, str) and isinstance(new, float):
        return float(old) == new
    if isinstance(old, dict):
        return isinstance(new, dict) and old.keys() == new.keys() and all(_agree(new[k], old[k]) for k in old)
    if isinstance(old, list):
        return isinstance(new, list) and len(new) == len(old) and all(map(_agree, new, old))
    return type(new) is type(old) and new == old


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_shipped_experiments_load_as_before(path):
    text = path.read_text()
    assert _agree(yaml.load(text, Loader=_Loader), yaml.safe_load(text))
    assert load_experiment(path).name


@pytest.mark.parametrize("md,index,block", BLOCKS, ids=[f"{b[0].name}-{b[1]}" for b in BLOCKS])
def test_documented_yaml_reads_as_before(tmp_path, md, index, block):
    assert _agree(yaml.load(block, Loader=_Loader), yaml.safe_load(block))
    if md.name == "README.md":  # the README's blocks are experiment files as they stand
        assert load_experiment(write(tmp_path, block)).name


def test_to_yaml_round_trips_float_like_strings(tmp_path):
    """OmegaConf quotes '1e-3' when it writes YAML, so a best-trial YAML reads back the same."""
    from paralab.platform.config.load import to_yaml

    cfg = load_experiment(None, ["name='1e3'", "sweep.params[model.cell].values=['1e-3', -.5]"])
    assert cfg.name == "1e3" and cfg.sweep.params["model.cell"].values == ["1e-3", -0.5]
    assert load_experiment(write(tmp_path, to_yaml(cfg))) == cfg


def test_a_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {path}: not UTF-8 text (byte 0xe9 at offset 9); save it as UTF-8"


def test_files_are_read_as_utf8_whatever_the_locale(tmp_path):
    """experiments/scaling/cells.yaml has α and ≈ in its comments."""
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    code = "from paralab.platform.config.load import load_experiment as l; l('experiments/scaling/cells.yaml')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
