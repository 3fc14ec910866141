"""The package layout: `platform/`, `kernels/` and `models/` are reached only through `paralab`.

A top-level `platform` package would shadow the standard library's `platform` whenever the
repo root is on sys.path (as with `python -m pytest`), and Ray and torch would break.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {
    "platform": "paralab.platform",
    "kernels": "paralab.kernels",
    "models": "paralab.models",
    "dashboards": "paralab.dashboards",
}
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def test_stdlib_platform_in_this_process():
    import platform

    assert Path(platform.__file__).resolve().parent == STDLIB
    assert platform.system()  # the attribute pytest itself needs


def test_stdlib_platform_from_repo_root_subprocess():
    code = "import platform, sys; print(platform.__file__); print(platform.system())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert Path(out.stdout.splitlines()[0]).resolve().parent == STDLIB


def test_top_level_folders_have_no_init():
    for folder in MAPPED:
        assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/__init__.py would shadow"


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(MAPPED.values())
    for folder, package in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found == listed, f"missing from pyproject: {found - listed}; stale: {listed - found}"


def _modules(names: list[str]) -> list[str]:
    mods = []
    for name in names:
        if name.startswith("paralab/") and name.endswith(".py"):
            mod = name.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
            mods.append(mod)
    return sorted(set(mods))


def _import_all_script(modules: list[str], forbidden_root: Path) -> str:
    return (
        "import importlib, sys\n"
        f"mods = {modules!r}\n"
        "for m in mods:\n"
        "    mod = importlib.import_module(m)\n"
        f"    assert not str(mod.__file__).startswith({str(forbidden_root)!r}), (m, mod.__file__)\n"
        "import platform; assert platform.system()\n"
        "print(len(mods))\n"
    )


def test_editable_install_imports_from_anywhere(tmp_path):
    code = "import paralab.platform.cli as c, paralab.models.config, paralab.kernels.scan; print(c.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == ROOT / "platform" / "cli.py"


@pytest.mark.slow
def test_wheel_installs_into_fresh_venv_and_imports_every_module(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True, capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("paralab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.startswith(("platform/", "kernels/", "models/")) for n in names), "unmapped top-level"
    modules = _modules(names)
    assert {"paralab.platform.cli", "paralab.models.config", "paralab.kernels.scan"} <= set(modules)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = next((env_dir / "lib").glob("python*/site-packages"))
    # Dependencies come from this interpreter's site-packages (its .pth files, and with them the
    # editable finder, are not processed); paralab itself only from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)
    assert (env_dir / "bin" / "paralab").exists(), "console script not installed"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TRITON_INTERPRET": "1"}
    out = subprocess.run([str(py), "-c", _import_all_script(modules, ROOT)], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.strip().splitlines()[-1]) == len(modules)


def test_every_dependency_is_pinned():
    """Installs are reproducible: every requirement, extras included, names one version."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    loose = [r for r in requirements if "==" not in r]
    assert not loose, f"not pinned to one version: {loose}"
