"""The shipped cluster configs parse and satisfy Ray's autoscaler schema (or KubeRay's shape),
name images that Ray publishes, and copy a checkout to the nodes without its local state."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
SCHEMA = json.loads(files("ray.autoscaler").joinpath("ray-schema.json").read_text())


@pytest.mark.parametrize("name", ["aws.yaml", "local.yaml"])
def test_autoscaler_config_matches_ray_schema(name):
    config = yaml.safe_load((CLUSTER / name).read_text())
    jsonschema.validate(config, SCHEMA)


def test_schema_rejects_a_broken_config():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"cluster_name": "x", "provider": {"type": "aws"}, "max_wrkers": 2}, SCHEMA)


def test_kuberay_cluster_shape():
    cluster = yaml.safe_load((CLUSTER / "kuberay.yaml").read_text())
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["rayVersion"] == "2.60.0"
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1


CONFIGS = sorted(CLUSTER.glob("*.yaml"))
AUTOSCALER = ["aws.yaml", "local.yaml"]
LOCAL_ONLY = [".venv", ".paralab", "build", "dist", "*.egg-info", "__pycache__", ".whl"]
"""What ``ray up`` must not copy from a checkout: the venv (its scripts name this machine's
paths), local runs and their MLflow DB, and build outputs."""


def _images(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from _images(value)
    elif isinstance(node, list):
        for item in node:
            yield from _images(item)


def test_configs_name_the_maintained_ray_image_of_the_pinned_ray():
    # Ray published no rayproject/ray-ml image after 2.49 (ray-project/ray#57070).
    import ray

    images = {}
    for path in CONFIGS:
        assert "ray-ml:" not in path.read_text(), path.name  # not even commented out
        images[path.name] = list(_images(yaml.safe_load(path.read_text())))
    assert images["aws.yaml"] and images["kuberay.yaml"]
    for name, found in images.items():
        for image in found:
            repo, tag = image.split(":")
            assert repo == "rayproject/ray", (name, image)
            assert tag.startswith(f"{ray.__version__}-py311-cu"), (name, image)


def test_aws_torch_build_matches_the_image_cuda_and_the_pinned_torch():
    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    cuda = config["docker"]["image"].rsplit("-", 1)[1]
    pyproject = (CLUSTER.parent / "pyproject.toml").read_text()
    torch_pin = re.search(r'"(torch==[^"]+)"', pyproject).group(1)
    (torch_install,) = [c for c in config["setup_commands"] if " torch==" in c]
    assert f" {torch_pin} " in torch_install
    assert torch_install.endswith(f"https://download.pytorch.org/whl/{cuda}")


@pytest.mark.parametrize("name", AUTOSCALER)
def test_mounted_checkout_leaves_out_local_state(name):
    config = yaml.safe_load((CLUSTER / name).read_text())
    assert "." in config["file_mounts"].values()
    assert set(LOCAL_ONLY) <= set(config.get("rsync_exclude", []))
    assert config.get("rsync_filter") == [".gitignore"]


def _rsync_args(config):
    """The filter arguments Ray's SSH command runner gives rsync for this config."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    options = {key: config.get(key) for key in ("rsync_exclude", "rsync_filter")}
    return SSHCommandRunner._create_rsync_filter_args(None, options)


def _copy(args, source, target):
    subprocess.run(["rsync", "-a", *args, f"{source}/", f"{target}/"], check=True)
    return {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}


@pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync")
@pytest.mark.parametrize("name", AUTOSCALER)
def test_rsync_with_the_config_copies_code_and_not_local_state(name, tmp_path):
    config = yaml.safe_load((CLUSTER / name).read_text())
    src = tmp_path / "checkout"
    kept = ["pyproject.toml", "README.md", "Makefile", ".gitignore", "platform/cli.py",
            "models/cell.py", "kernels/scan/linear.py", "cluster/aws.yaml"]
    dropped = [".venv/bin/python", ".venv/.paralab-installed", ".paralab/mlflow.db",
               ".paralab/storage/run/checkpoint_1/model.pt", "build/lib/x.py", "dist/p.whl",
               "paralab.egg-info/PKG-INFO", "platform/__pycache__/cli.cpython-311.pyc",
               ".whl/einops.whl", ".pytest_cache/v/x", "mlruns/0/meta.yaml", "models/cell.pyc"]
    for rel in kept + dropped:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    (src / ".gitignore").write_text((CLUSTER.parent / ".gitignore").read_text())
    args = _rsync_args(config)

    assert _copy(args, src, tmp_path / "head") == set(kept)
    # The head passes its copy on to the workers with the same options.
    assert _copy(args, tmp_path / "head", tmp_path / "worker") == set(kept)


@pytest.mark.skipif(shutil.which("rsync") is None or shutil.which("git") is None,
                    reason="needs rsync and git")
def test_rsync_with_the_config_keeps_every_tracked_file(tmp_path):
    root = CLUSTER.parent
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = {p for p in listed.stdout.decode().split("\0") if p and (root / p).is_file()}
    args = _rsync_args(yaml.safe_load((CLUSTER / "aws.yaml").read_text()))
    out = subprocess.run(
        ["rsync", "-a", "--dry-run", "--out-format=%n", *args, f"{root}/", f"{tmp_path}/"],
        check=True, capture_output=True, text=True).stdout
    assert tracked - set(out.splitlines()) == set()
