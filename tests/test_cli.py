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
        "sweep": ["--dry-run", "--help", "--resume", "--retry-errored", "file", "overrides"],
        "stack": ["--help", "action"],
        "ui": ["--help", "--host", "--port"],
    }


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"paralab {package_version()}+")


@pytest.mark.parametrize("command", ["validate", "run", "sweep", "stack", "ui"])
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
