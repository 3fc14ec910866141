"""The CLI surface: commands and options users and scripts rely on stay put."""

from __future__ import annotations

import argparse

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
        "submit": ["--address", "--follow", "--help", "--sweep", "file", "overrides"],
        "sweep": ["--dry-run", "--help", "--resume", "--retry-errored", "file", "overrides"],
        "scaling": ["--help", "--out", "file", "overrides"],
        "stack": ["--help", "action"],
        "ui": ["--help", "--host", "--port"],
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
