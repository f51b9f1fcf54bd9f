"""The command as a process: workers that stop with their parent, a closed or full standard
output that is an error, not a silent success."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnarena.arena.store import Store

SLOW = """
name = "slow"
[[runs]]
tasks = ["copy"]
mixers = ["softmax", "gla"]
train = { steps = 100000, eval_every = 50, eval_examples = 16, batch = 4 }
model = { dim = 16, depth = 1, heads = 2 }
"""


def _children(pid):
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads parent pids from /proc")
def test_a_worker_stops_and_records_its_run_when_its_parent_is_killed(tmp_path):
    suite, store = tmp_path / "slow.toml", tmp_path / "a.sqlite"
    suite.write_text(SLOW)
    parent = subprocess.Popen([sys.executable, "-m", "attnarena", "run", "--suite", str(suite),
                               "--store", str(store), "--out", str(tmp_path / "out"),
                               "--jobs", "2", "--quiet"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if store.exists() and len(Store(store).runs(status="running")) == 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the two runs never started")
        [worker] = _children(parent.pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 60
        while time.time() < deadline and Path(f"/proc/{worker}").exists() \
                and "Z" not in Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1][:3]:
            time.sleep(0.5)
        assert not Path(f"/proc/{worker}").exists() or \
            "Z" in Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1][:3]
        statuses = sorted(r["status"] for r in Store(store).runs())
        assert "interrupted" in statuses  # the worker recorded its own run
    finally:
        for pid in [parent.pid, *_children(parent.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_closed_standard_output_is_an_error():
    done = subprocess.run(f"{sys.executable} -m attnarena list >&-", shell=True,
                          capture_output=False, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 2 and "standard output is closed" in done.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_standard_output_is_an_error():
    done = subprocess.run(f"{sys.executable} -m attnarena list > /dev/full", shell=True,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode != 0 and "No space left" in done.stderr
