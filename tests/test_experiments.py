"""Every shipped experiment YAML parses and validates against the schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from paralab.platform.config.load import load_experiment

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.yaml"))


def test_there_are_experiments():
    assert any(p.name == "quickstart.yaml" for p in EXPERIMENTS)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[str(p.relative_to(ROOT)) for p in EXPERIMENTS])
def test_experiment_validates(path):
    cfg = load_experiment(path)
    assert cfg.name
    if "scaling" in path.parts:
        assert cfg.scaling is not None, "a file under experiments/scaling/ needs a scaling: section"
    if "sweeps" in path.parts or "scaling" in path.parts:
        from paralab.platform.tune import check_params

        assert cfg.sweep is not None, f"a file under {path.parent.name}/ needs a sweep: section"
        check_params(path, [], cfg.sweep)  # every swept key and value applies to the schema
