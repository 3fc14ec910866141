"""The experiment schema: defaults, merging, and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from paralab.platform.cli import main
from paralab.platform.config.load import ConfigError, from_dict, load_experiment, to_dict
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
