"""Operators' storage faults, for real: a run folder (or a client's state folder) that is
read-only, full, or has a file in its way stops the command with one line naming the path,
exit 2, and nothing left behind; a disk that fills mid-run ends the run with its reason, a
summary (from the reserve) and non-zero exits for the coordinator and its clients."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mounts import fill, tmpfs
from procs import alive, cli, finish, tail

REASONS = {"file": "is a file, not a folder", "read-only": "read-only file system",
           "full": "no space left on device"}


def _command(which: str, target: Path, model: Path) -> tuple[list[str], Path]:
    """The argv that writes ``target``, and the folder its error must name."""
    base = [sys.executable, "-m", "fedlora.deploy.cli"]
    if which == "client":  # the state folder is per id; the coordinator is never reached
        return base + ["client", "--insecure", "--server", "127.0.0.1:9", "--id", "client-0",
                       "--state-dir", str(target)], target / "client-0"
    extra = ["--no-live"] if which == "run" else ["--open-run"]  # `run` makes its own tokens
    return base + [which, "--insecure", "--model", str(model), "--clients", "2",
                   "--run-dir", str(target), *extra], target


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("fault", ["file", "read-only", "full"])
@pytest.mark.parametrize("which", ["server", "run", "client"])
def test_storage_fault_is_one_line_naming_the_path_exit_2(tmp_path, tiny_model, which, fault):
    disk = tmp_path / "disk"
    if fault == "file":
        disk.mkdir()
        (disk / "runs").write_text("an operator's file where the folder should be\n")
        mount = None
    else:
        mount = tmpfs(disk, size="1m", read_only=fault == "read-only")
        mount.__enter__()
    try:
        if fault == "full":
            fill(disk)
        before = _files(disk)
        argv, named = _command(which, disk / "runs" / "exp", tiny_model)
        p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert lines[0].startswith(f"fedlora {which}: storage error: ")
        assert str(named) in lines[0] and REASONS[fault] in lines[0], lines[0]
        assert _files(disk) == before  # no 0-byte or temporary file left behind
    finally:
        if mount is not None:
            mount.__exit__(None, None, None)


def _round_done(run_dir: Path) -> bool:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return False
    return any('"type": "round"' in ln and json.loads(ln)["round"] >= 1 for ln in lines)


def _wait_round(run_dir: Path, procs: list[subprocess.Popen], log: Path) -> None:
    end = time.time() + 300
    while not _round_done(run_dir):
        assert all(p.poll() is None for p in procs), tail(log)
        assert time.time() < end, "no round within 300s:\n" + tail(log)
        time.sleep(0.2)


def test_disk_full_mid_run_ends_the_run_with_its_reason(tmp_path, tiny_model):
    logs, state = tmp_path / "logs", tmp_path / "state"  # off the disk that fills
    with tmpfs(tmp_path / "disk", size="8m") as disk:
        run_dir = disk / "run"
        cfg = tmp_path / "server.yaml"
        cfg.write_text(yaml.safe_dump({
            "port": 0, "insecure": True, "open_run": True, "run_dir": str(run_dir),
            "model": str(tiny_model), "clients": 2, "min_clients": 2, "rounds": 1000,  # far more than fit before the fill
            "training": {"max_steps": 2, "batch_size": 16}}))
        server = cli("server", "--config", str(cfg), log=logs / "coordinator.log")
        end = time.time() + 300
        while not (run_dir / "coordinator.json").is_file():
            assert server.poll() is None and time.time() < end, tail(logs / "coordinator.log")
            time.sleep(0.2)
        address = json.loads((run_dir / "coordinator.json").read_text())["address"]
        clients = [cli("client", "--server", address, "--id", f"client-{i}", "--insecure",
                       "--threads", "1", "--state-dir", str(state), log=logs / f"client-{i}.log")
                   for i in range(2)]
        procs = [server, *clients]
        try:
            _wait_round(run_dir, procs, logs / "coordinator.log")
            fill(disk)
            codes = finish(procs, timeout=300)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        coordinator_log = (logs / "coordinator.log").read_text()
        assert codes[0] == 1, tail(logs / "coordinator.log")
        # whichever write the disk refused first (a record or the journal) ends the run
        assert re.search(rf"ERROR run folder {re.escape(str(run_dir))}: cannot write .*: "
                         r"no space left on device", coordinator_log), tail(logs / "coordinator.log")
        assert "Traceback" not in coordinator_log
        summary = json.loads((run_dir / "summary.json").read_text())  # the reserve made room
        assert summary["status"] == "failed" and "no space left on device" in summary["error"]
        assert summary["rounds_completed"] >= 1 and summary["adapter"] is None
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            json.loads(line)  # whole records only: the refused one was cut back
        for i, code in enumerate(codes[1:]):  # the clients of a failed run end non-zero
            assert code == 1, tail(logs / f"client-{i}.log")
            assert "the run failed: run folder" in (logs / f"client-{i}.log").read_text()


def test_disk_full_mid_run_under_fedlora_run_says_why_in_one_line(tmp_path, tiny_model):
    with tmpfs(tmp_path / "disk", size="16m") as disk:
        run_dir = disk / "run"
        p = subprocess.Popen(
            [sys.executable, "-m", "fedlora.deploy.cli", "run", "--insecure", "--model", str(tiny_model),
             "--clients", "2", "--min-clients", "2", "--rounds", "1000", "--local-steps", "2",
             "--batch-size", "16", "--run-dir", str(run_dir), "--no-live"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_round(run_dir, [p], run_dir / "logs" / "coordinator.log")
            pids = json.loads((run_dir / "cluster.json").read_text())["pids"]
            fill(disk)
            _out, err = p.communicate(timeout=300)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        last = err.strip().splitlines()[-1]
        # whichever wrote first met the full disk: the coordinator (its records) or a client
        # (its state folder is in the run folder); either way the one line says so
        assert p.returncode != 0 and last.startswith("fedlora run: ") and \
            "no space left on device" in last, err
        assert not any(alive(pid) for pid in pids.values())
