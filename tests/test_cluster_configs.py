"""The shipped cluster configs parse and satisfy Ray's autoscaler schema (or KubeRay's shape),
name images that Ray publishes, and copy a checkout to the nodes without its local state; the
KubeRay image's Dockerfile installs what aws.yaml installs, from a context without local state."""

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


# --- cluster/Dockerfile and .dockerignore: the image cluster/kuberay.yaml is to run ---------

ROOT = CLUSTER.parent
DOCKERFILE = CLUSTER / "Dockerfile"


def _instructions():
    """(INSTRUCTION, arguments) for each instruction of cluster/Dockerfile, continuations joined."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        instruction, _, args = (pending + line).strip().partition(" ")
        out.append((instruction.upper(), args.strip()))
        pending = ""
    assert not pending, "a continuation ends the file"
    return out


def _copies():
    """The context paths each COPY takes, with the instruction's index."""
    for i, (instruction, args) in enumerate(_instructions()):
        if instruction == "COPY":
            words = [w for w in args.split() if not w.startswith("--")]
            assert not any(w.startswith("--from") for w in args.split()), "one stage only"
            yield i, words[:-1]


def _runs(needle):
    return [(i, args) for i, (instruction, args) in enumerate(_instructions())
            if instruction == "RUN" and needle in args]


def _torch_pin():
    return re.search(r'"(torch==[^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)


def _dockerignore_regexes():
    """.dockerignore as Docker reads it: each line cleaned of a leading `/` and a trailing `/`,
    matched from the context root, `*` and `?` within one path element, `**` across any number
    of them; a later line, or a `!` exception, overrides an earlier one."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        assert "[" not in pattern and "\\" not in pattern, f"this parser has no {pattern!r}"
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((re.compile(regex + r"\Z"), negate))
    return rules


def _ignored(path, rules):
    """Whether Docker leaves `path` (relative, with `/`) out of the build context: a pattern
    that matches a folder leaves out everything in it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for regex, negate in rules:
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerfile_builds_from_the_image_the_configs_name():
    froms = [args for instruction, args in _instructions() if instruction == "FROM"]
    assert len(froms) == 1, froms
    base = froms[0]
    kuberay = list(_images(yaml.safe_load((CLUSTER / "kuberay.yaml").read_text())))
    assert len(kuberay) == 2  # the head and the GPU workers
    # kuberay.yaml names Ray's image as a placeholder for the one built FROM it.
    assert set(kuberay) == {base}
    assert yaml.safe_load((CLUSTER / "aws.yaml").read_text())["docker"]["image"] == base


def test_dockerfile_installs_the_pinned_torch_for_the_image_cuda_first():
    base = next(args for instruction, args in _instructions() if instruction == "FROM")
    cuda = base.rsplit("-", 1)[1]
    assert re.fullmatch(r"cu\d+", cuda), base
    ((index, torch_install),) = _runs(" torch==")
    assert f" {_torch_pin()} " in torch_install
    assert re.search(r"--index-url (\S+)", torch_install).group(1) == \
        f"https://download.pytorch.org/whl/{cuda}"
    # The same command as aws.yaml's, apart from pip's flags.
    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())["setup_commands"]
    (aws_torch,) = [c for c in aws if " torch==" in c]
    assert aws_torch.split()[-3:] == torch_install.split()[-3:]
    # Torch is the first layer, before anything is copied, so code edits reuse it.
    assert index < min(i for i, _ in _copies())


def test_dockerfile_installs_paralab_with_hf_as_a_plain_install_after_its_dependencies():
    order = {i: sources for i, sources in _copies()}
    pyproject_at = next(i for i, sources in order.items() if "pyproject.toml" in sources)
    ((deps_at, deps),) = _runs("tomllib")
    assert "optional-dependencies']['hf']" in deps and "pip install" in deps
    ((install_at, install),) = _runs("'.[hf]'")
    assert re.search(r"\bpip install\b", install) and not re.search(r"(^|\s)(-e|--editable)\b", install)
    code_at = [i for i, sources in order.items() if set(sources) & {"platform", "kernels", "models"}]
    # pyproject alone, then its dependencies, then the code, then paralab itself.
    assert pyproject_at < deps_at < min(code_at) and max(code_at) < install_at
    assert set(order) - {pyproject_at} <= set(range(deps_at, install_at))


def test_dockerfile_copies_existing_paths_the_context_keeps():
    rules = _dockerignore_regexes()
    sources = [s for _, found in _copies() for s in found]
    assert {"pyproject.toml", "platform", "kernels", "models", "dashboards"} <= set(sources)
    for source in sources:
        assert not any(c in source for c in "*?["), source  # named, not globbed
        assert (ROOT / source).exists(), f"cluster/Dockerfile copies {source}, which is missing"
        assert not _ignored(source, rules), f".dockerignore leaves out {source}"


def test_dockerignore_leaves_out_local_state():
    rules = _dockerignore_regexes()
    kept = ["pyproject.toml", "README.md", "platform/cli.py", "models/cell.py",
            "kernels/scan/linear.py", "dashboards/plots.py", "cluster/Dockerfile",
            "experiments/quickstart.yaml", ".gitignore"]
    dropped = [".venv/bin/python", ".venv/.paralab-installed", ".paralab/mlflow.db",
               ".paralab/storage/run/checkpoint_1/model.pt", "build/lib/x.py", "dist/p.whl",
               "paralab.egg-info/PKG-INFO", "platform/__pycache__/cli.cpython-311.pyc",
               ".whl/einops.whl", ".pytest_cache/v/x", ".ruff_cache/x", "mlruns/0/meta.yaml",
               "models/cell.pyc", ".git/HEAD", ".gl/x", "tests/.pytest_cache/v/x"]
    assert [p for p in kept if _ignored(p, rules)] == []
    assert [p for p in dropped if not _ignored(p, rules)] == []
    for folder in LOCAL_ONLY:  # what aws.yaml's rsync_exclude leaves behind
        assert _ignored(folder.replace("*", "paralab"), rules), folder


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dockerignore_keeps_every_tracked_file_the_dockerfile_copies():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    sources = [s for _, found in _copies() for s in found]
    tracked = [p for p in listed.stdout.decode().split("\0")
               if p and any(p == s or p.startswith(f"{s}/") for s in sources)]
    assert tracked
    rules = _dockerignore_regexes()
    assert [p for p in tracked if _ignored(p, rules)] == []


def _context_copy(target):
    """What cluster/Dockerfile copies, as Docker sends it (without what .dockerignore drops)."""
    rules = _dockerignore_regexes()
    for _, sources in _copies():
        for source in sources:
            path = ROOT / source
            files_ = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for f in files_:
                rel = f.relative_to(ROOT).as_posix()
                if not _ignored(rel, rules):
                    (target / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, target / rel)


def test_dockerfile_dependency_list_is_pyprojects_with_hf(tmp_path):
    import os
    import sys
    import tomllib

    _context_copy(tmp_path)
    ((_, deps),) = _runs("tomllib")
    command = deps.split(" > ", 1)[0]  # the `python -c "..."` that writes the requirements
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["sh", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True).stdout
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert out.splitlines() == project["dependencies"] + project["optional-dependencies"]["hf"]
    assert _torch_pin() in out.splitlines()


def test_dockerfile_copies_are_enough_to_build_paralab(tmp_path):
    """A plain `pip install .` builds a wheel: the copied paths alone must build it."""
    import sys
    import zipfile

    context = tmp_path / "paralab"
    _context_copy(context)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(context)],
        check=True, capture_output=True,
    )
    wheel = zipfile.ZipFile(next((tmp_path / "dist").glob("paralab-*.whl")))
    names = set(wheel.namelist())
    assert {"paralab/platform/cli.py", "paralab/models/config.py",
            "paralab/kernels/scan/__init__.py", "paralab/dashboards/plots.py"} <= names
    metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Provides-Extra: hf" in metadata
    # pyproject's `readme`: setuptools only warns when the file is missing, for now.
    assert (ROOT / "README.md").read_text().splitlines()[0] in metadata
