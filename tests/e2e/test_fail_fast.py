"""`fedlora run` fails fast: when its clients die (here: they cannot load their data) or its
coordinator is killed, it stops the cluster, exits non-zero and prints the failed process's
reason as its last line; nothing it started is left running. The seconds from the death to
the command's exit are printed (run with -s to see them), never asserted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from procs import alive, records

CLIENT_DATA_ERROR = ("data: the coordinator federates no data of its own in this run (clients "
                     "bring theirs); pass --data FILE")


def _run(tmp_path, tiny_model, *extra) -> tuple:
    run_dir = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "fedlora.deploy.cli", "run", "--insecure",
                          "--model", str(tiny_model), "--clients", "2", "--min-clients", "2",
                          "--run-dir", str(run_dir), "--no-live", "--local-steps", "2",
                          "--batch-size", "16", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return run_dir, p


def test_clients_that_cannot_load_data_end_the_run_with_their_reason(tmp_path, tiny_model):
    data = tmp_path / "mine.csv"  # the coordinator's test file (own: clients bring theirs, and have none)
    data.write_text("text,label\nwhat is a cat,DESC\nwho is bob,HUM\nwhere is paris,LOC\n"
                    "how many legs,NUM\n")
    run_dir, p = _run(tmp_path, tiny_model, "--data", str(data), "--partition", "own")
    _out, err = p.communicate(timeout=600)  # a hang guard, not a timing
    ended = time.time()
    last = err.strip().splitlines()[-1]
    assert p.returncode == 1, err
    assert last in {f"fedlora run: client-{i} exited 2: {CLIENT_DATA_ERROR}" for i in range(2)}, err
    pids = json.loads((run_dir / "cluster.json").read_text())["pids"]
    assert not any(alive(pid) for pid in pids.values())
    died = min((run_dir / "logs" / f"client-{i}.log").stat().st_mtime for i in range(2))
    print(f"\nfedlora run exited {ended - died:.1f}s after the first client died")


def test_a_killed_coordinator_ends_the_run(tmp_path, tiny_model):
    run_dir, p = _run(tmp_path, tiny_model, "--rounds", "100000")
    end = time.time() + 300
    while not any(r["round"] >= 1 for r in _rounds(run_dir)):
        assert p.poll() is None and time.time() < end, p.communicate()[1]
        time.sleep(0.5)
    pids = json.loads((run_dir / "cluster.json").read_text())["pids"]
    os.kill(pids["coordinator"], signal.SIGKILL)
    killed = time.time()
    _out, err = p.communicate(timeout=600)
    print(f"\nfedlora run exited {time.time() - killed:.1f}s after the coordinator was killed")
    assert p.returncode == 1 and err.strip().splitlines()[-1] == \
        "fedlora run: coordinator was killed by SIGKILL", err
    assert not any(alive(pid) for pid in pids.values())


def _rounds(run_dir):
    try:
        return [r for r in records(run_dir, "round") if r["round"] > 0]
    except FileNotFoundError:
        return []
