"""Checkpoint staging folders: what a killed worker leaves in the temp dir is removed by the
next worker on the host, and nothing of a live process or another host is touched."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from paralab.platform.train import staging

# A "worker" that stages a checkpoint file and then waits to be killed mid-save.
WORKER = """
import sys, time
from pathlib import Path
from paralab.platform.train.staging import staging_folder
with staging_folder(Path(sys.argv[1])) as folder:
    (folder / "model.pt").write_bytes(b"x" * 1024)
    print(folder, flush=True)
    time.sleep(600)
"""


def _worker_saving(root: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(root)], stdout=subprocess.PIPE, text=True)
    folder = Path(proc.stdout.readline().strip())
    assert (folder / "model.pt").exists()
    return proc, folder


def test_a_killed_workers_staging_folder_is_removed_by_the_next_worker(tmp_path):
    killed, left = _worker_saving(tmp_path)
    live, in_use = _worker_saving(tmp_path)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert left.exists(), "SIGKILL runs no cleanup: the folder stays until removed"
        other_host = tmp_path / f"{staging.PREFIX}elsewhere-4026531836-{killed.pid}-abcd"
        other_host.mkdir()
        no_pid = tmp_path / f"{staging.PREFIX}abcd"
        no_pid.mkdir()

        with staging.staging_folder(tmp_path) as mine:
            assert mine.is_dir() and not any(mine.iterdir())
            assert not left.exists()
            assert in_use.exists() and (in_use / "model.pt").exists()
            assert other_host.exists() and no_pid.exists()
        assert not mine.exists(), "a staging folder outlives its save"
    finally:
        live.kill()
        live.wait()
    assert staging.remove_stale(tmp_path) == [in_use]
