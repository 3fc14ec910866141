"""The CLI surface: commands and options users and scripts rely on stay put."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from paralab.platform.cli import build_parser, main
from paralab.platform.identity import package_version


def surface(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: sorted(opt for a in p._actions for opt in a.option_strings if opt != "-h")
        + sorted(a.dest for a in p._actions if not a.option_strings)
        for name, p in sub.choices.items()
    }


def test_cli_surface_is_frozen():
    assert surface(build_parser()) == {
        "validate": ["--help", "file", "overrides"],
        "run": ["--create-bucket", "--help", "--restart", "file", "overrides"],
        "submit": ["--address", "--create-bucket", "--follow", "--help", "--restart", "--resume",
                   "--retry-errored", "--sweep", "file", "overrides"],
        "sweep": ["--create-bucket", "--dry-run", "--help", "--resume", "--retry-errored", "file",
                  "overrides"],
        "scaling": ["--help", "--out", "file", "overrides"],
        "stack": ["--help", "action"],
        "ui": ["--help", "--host", "--port", "file", "overrides"],
    }


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"paralab {package_version()}+")


@pytest.mark.parametrize(
    "command", ["validate", "run", "submit", "sweep", "scaling", "stack", "ui"]
)
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: paralab" in capsys.readouterr().out


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["trian"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_stack_status_when_down(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PARALAB_HOME", str(tmp_path))
    assert main(["stack", "status"]) == 0
    out = capsys.readouterr().out
    assert "seaweedfs" in out and "mlflow" in out and "export" not in out


def test_overrides_may_follow_options():
    from paralab.platform.cli import parse

    args = parse(["run", "f.yaml", "a.b=1", "--restart", "c.d=2"])
    assert args.restart and args.overrides == ["a.b=1", "c.d=2"]
    args = parse(["submit", "f.yaml", "--address", "http://h:8265", "--follow", "x=1"])
    assert args.follow and args.address == "http://h:8265" and args.overrides == ["x=1"]


def test_stray_arguments_still_fail(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "f.yaml", "--restart", "notanoverride"])
    assert info.value.code == 2
    assert "unrecognized arguments: notanoverride" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, again",
    [
        (["run", "exp.yaml", "train.lr=1e-3", "--restart"], "paralab run exp.yaml train.lr=1e-3"),
        (["sweep", "my sweep.yaml", "sweep.num_samples=2"],
         "paralab sweep 'my sweep.yaml' sweep.num_samples=2 --resume"),
    ],
)  # fmt: skip
def test_ctrl_c_prints_the_command_that_resumes(argv, again, monkeypatch, capsys):
    from paralab.platform import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, f"cmd_{argv[0]}", interrupted)
    assert cli.main(argv) == 130
    assert f"to resume, run {again}" in capsys.readouterr().err.replace("\n", " ")


def test_ctrl_c_of_a_command_with_nothing_to_resume_says_only_that(monkeypatch, capsys):
    from paralab.platform import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_stack", interrupted)
    assert cli.main(["stack", "up"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_the_code_version_covers_only_code_that_computes(tmp_path):
    import shutil

    from paralab.platform.identity import COMPUTING_PACKAGES, hash_sources
    from paralab.platform.identity import source_hash as installed

    root = Path(__file__).resolve().parents[1]
    tree = tmp_path / "src"
    shutil.copytree(root / "platform", tree / "platform")
    shutil.copytree(root / "models", tree / "models")
    shutil.copytree(root / "kernels", tree / "kernels")

    def code_hash(shipped=None):
        folders = {name: [tree / name.removeprefix("paralab.").replace(".", "/")]
                   for name in COMPUTING_PACKAGES}
        if shipped:  # a second copy found after the first, as an installed package beside a job's
            for name in folders:
                folders[name].append(shipped / name.removeprefix("paralab.").replace(".", "/"))
        return hash_sources(folders.items())

    before = code_hash()
    assert before == installed()  # the same files the running code hashes
    (tree / "platform" / "cli.py").write_text("# a message fixed\n", encoding="utf-8")
    assert code_hash() == before  # the CLI does not compute a run
    other = tmp_path / "other"
    shutil.copytree(tree, other)
    (other / "models" / "lm.py").write_text("# another version\n", encoding="utf-8")
    assert code_hash(shipped=other) == before  # the first copy is the one imported and hashed
    (tree / "models" / "lm.py").write_text("# edited\n", encoding="utf-8")
    assert code_hash() != before


def test_ui_serves_the_store_the_experiment_names(tmp_path, monkeypatch, capsys):
    from paralab.platform import cli

    exec_args = []
    monkeypatch.setattr(cli.os, "execvp", lambda program, argv: exec_args.append(argv))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "elsewhere.db"
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(f"tracking: {{uri: 'sqlite:///{db}'}}\n")
    assert main(["ui", str(experiment), "--port", "5077"]) == 0
    (argv,) = exec_args
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{db}"
    assert argv[argv.index("--port") + 1] == "5077"
    assert main(["ui", str(experiment), "tracking.uri=http://mlflow.internal:5000"]) == 0
    assert "MLflow is served at http://mlflow.internal:5000" in capsys.readouterr().out
    assert main(["ui", str(experiment), "tracking.uri=https://alice:s3cr3t@mlflow.internal"]) == 0
    out = capsys.readouterr().out
    assert "https://alice:***@mlflow.internal" in out and "s3cr3t" not in out


def test_ui_on_a_port_in_use_is_one_line_before_mlflow_starts(tmp_path, monkeypatch, capsys):
    import socket

    from paralab.platform import cli

    monkeypatch.setattr(cli.os, "execvp", lambda program, argv: pytest.fail("MLflow was started"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: port {port} on 127.0.0.1 is in use (another `paralab ui`?); pass --port with a free one"


@pytest.mark.parametrize("argv", [["--version"], ["submit", "experiments/quickstart.yaml"]],
                         ids=["version", "refusal"])
def test_answers_that_need_no_training_import_neither_torch_nor_mlflow(argv):
    """Those imports cost seconds; `--version` and a refused command must not wait for them."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = ("import sys\nfrom paralab.platform.cli import main\n"
            "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
            "print(rc, sorted(m for m in ('torch', 'mlflow', 'ray') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=root, capture_output=True,
                          text=True, timeout=120)
    last = proc.stdout.strip().splitlines()[-1]
    assert last in ("0 []", "2 []"), proc.stdout + proc.stderr


def test_run_says_it_ignores_a_sweep_section(tmp_path, monkeypatch, capsys):
    """`paralab run` on a sweep YAML trains the base config; it says so, and points to the
    command that runs the sweep (here the run itself is refused: storage is unwritable)."""
    monkeypatch.chdir(tmp_path)
    sweep = Path(__file__).parents[1] / "experiments" / "sweeps" / "lr.yaml"
    assert main(["run", str(sweep), "storage.uri=/proc/paralab"]) == 2
    out, err = capsys.readouterr()
    out = " ".join(out.split())
    assert "has a sweep: section, which paralab run ignores" in out
    assert f"`paralab sweep {sweep}` runs the sweep" in out
    assert "storage.uri='/proc/paralab'" in err and err.count("error:") == 1
