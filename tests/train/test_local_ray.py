"""The private Ray cluster that `paralab run` and `paralab sweep` start binds loopback only, and
its processes ask their own cluster, not another on the machine, for actor states."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ray

PROBE = textwrap.dedent("""
    import ipaddress, os, sys
    from pathlib import Path
    from paralab.platform import cli
    try:
        cli.main(["--version"])      # what the CLI does first, before any command imports Ray
    except SystemExit:
        pass
    from paralab.platform.train.launch import init_ray
    import ray
    init_ray()
    ray.get(ray.remote(lambda: None).remote())   # a worker process too

    def tree(root):
        parent = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(stat.parent.name)] = int(fields[1])
        pids, grew = {root}, True
        while grew:
            more = {pid for pid, ppid in parent.items() if ppid in pids} - pids
            pids |= more
            grew = bool(more)
        return pids

    def sockets(pids):
        inodes = set()
        for pid in pids:
            for fd in Path(f"/proc/{pid}/fd").glob("*"):
                try:
                    link = os.readlink(fd)
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        return inodes

    def listening(inodes):
        found = []
        for table, width in (("tcp", 4), ("tcp6", 16)):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] != "0A" or cols[9] not in inodes:   # 0A: LISTEN
                    continue
                raw = bytes.fromhex(cols[1].split(":")[0])
                # /proc prints each 32-bit word in host (little-endian) order
                ip = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(ipaddress.ip_address(ip))
        return found

    bound = listening(sockets(tree(os.getpid())))
    ray.shutdown()
    assert bound, "no listening socket found"
    wide = [ip for ip in bound if not (getattr(ip, "ipv4_mapped", None) or ip).is_loopback]
    sys.exit(f"listening beyond loopback: {sorted(map(str, wide))}" if wide else 0)
""")


def test_local_cluster_listens_on_loopback_only(tmp_path):
    hidden = ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


TWO_CLUSTERS = textwrap.dedent("""
    import subprocess, sys, time
    import ray
    from paralab.platform.train.launch import init_ray
    init_ray()
    # Another Ray cluster on this machine, started after ours: Ray's state API, which Ray
    # Train's placement-group cleaner calls from inside the cluster, picks the newest
    # cluster on the machine unless told which.
    other = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "UP", "the other cluster did not start"
    try:
        @ray.remote(num_cpus=0)
        class Probe:
            def own_state(self):
                from ray.util.state import get_actor
                me = ray.get_runtime_context().get_actor_id()
                found = get_actor(me, timeout=30)
                return found.state if found else None
        probe = Probe.remote()
        print("STATE", ray.get(probe.own_state.remote()), flush=True)
    finally:
        other.terminate()
        other.wait(timeout=60)
""")
OTHER = textwrap.dedent("""
    import signal, sys, time, ray
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ray.init(address="local", num_cpus=1, include_dashboard=True, log_to_driver=False)
    print("UP", flush=True)
    while True:
        time.sleep(1)
""")


def test_the_state_api_inside_the_cluster_asks_its_own_cluster(tmp_path):
    """With a second Ray cluster on the machine, Ray Train's placement-group cleaner found no
    controller (it asked the other cluster) and either freed a live trial's CPUs or never
    freed a stopped one's; a sweep then waited forever for CPUs."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    proc = subprocess.run([sys.executable, "-c", TWO_CLUSTERS, OTHER], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert "STATE ALIVE" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


BLOCKED = textwrap.dedent("""
    import sys
    import ray
    from ray.util.placement_group import placement_group
    from paralab.platform import cli
    from paralab.platform.train import launch

    started = launch.init_ray

    def init_ray_then_take_every_cpu(*args, **kwargs):
        dashboard = started(*args, **kwargs)
        # Something else on this cluster holds every CPU: the run's workers never fit.
        group = placement_group([{"CPU": ray.cluster_resources()["CPU"]}])
        ray.get(group.ready(), timeout=60)
        return dashboard

    launch.init_ray = init_ray_then_take_every_cpu
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_workers_that_cannot_be_placed_fail_the_run_in_one_line(tmp_path):
    """On one machine Ray Train would wait forever for CPUs that something else holds; the run
    stops after a few placement tries and says why, and its MLflow run is marked failed."""
    from paralab_testing import QUICKSTART, mlflow_at, paralab_env, runs_of

    home = tmp_path / "home"
    tiny = ["name=unplaced", "model.d_model=16", "model.n_layers=1", "model.heads=2",
            "data.seq_len=16", "data.max_tokens=20000", "train.steps=2", "train.batch_size=4",
            "train.workers=2", "train.cpus_per_worker=0.5"]
    env = paralab_env(home, {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "2"})
    proc = subprocess.run([sys.executable, "-c", BLOCKED, "run", str(QUICKSTART), *tiny],
                          cwd=home, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, proc.stderr[-3000:]
    assert error[0].startswith(
        "error: Ray could not place the 2 training worker(s) (0.5 CPU each) on this machine's "
        "cluster in 6 s: something else holds its resources (see the Ray dashboard at "
        "http://127.0.0.1:"
    ), error[0]
    assert "Traceback" not in proc.stderr
    (run,) = runs_of(mlflow_at(home), "unplaced")
    assert run.info.status == "FAILED"
