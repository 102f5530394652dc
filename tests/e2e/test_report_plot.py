"""``fedlora report RUN --plot`` as a user runs it (a CLI process): PNG files from a run folder's
records; one line and exit 2 for a folder with no round to draw, or without matplotlib."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PNG = b"\x89PNG\r\n\x1a\n"
CHARTS = ["metric-by-round", "metric-by-mb", "metric-by-seconds", "bytes-by-client", "overview"]


def _report(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedlora.deploy.cli", "report", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def _transfer(payload: int) -> dict:
    return {"tensor_bytes": payload + 100, "payload_bytes": payload, "protobuf_bytes": payload + 20,
            "seconds": 0.2, "iface_bytes": None}


def _run_folder(folder: Path, rounds: int) -> Path:
    """A run folder's metrics.jsonl as the coordinator writes it (server/records.py)."""
    recs = [{"type": "join", "time": 0.1, "client": "client-0", "partition": 0},
            {"type": "round", "time": 1.0, "round": 0, "test_accuracy": 0.2, "test_loss": 1.8,
             "planned": 0, "accepted": 0, "seconds": 0.0, "up_mb": 0.0, "down_mb": 0.0}]
    for rnd in range(1, rounds + 1):
        recs.append({"type": "round_start", "time": rnd * 10.0, "round": rnd, "attempt": 0, "planned": 2})
        for i, cid in enumerate(("client-0", "client-1")):
            recs.append({"type": "client", "time": rnd * 10.0 + 5, "round": rnd, "attempt": 0, "client": cid,
                         "status": "accepted", "reason": None, "weight": 100.0 + i,
                         "up": _transfer(280_000 + i), "down": _transfer(150_000 * rnd),
                         "train_loss": 1.0, "local_accuracy": 0.6, "metrics": {"local_accuracy": 0.6}})
        recs.append({"type": "round", "time": rnd * 10.0 + 6, "round": rnd, "attempt": 0, "planned": 2,
                     "accepted": 2, "refused": [], "missing": [], "test_accuracy": 0.2 + rnd / 10,
                     "test_loss": 1.8 - rnd / 10, "train_loss": 1.0, "seconds": 6.0,
                     "evaluated_by": "coordinator", "up_mb": 0.56, "down_mb": 0.3 * rnd})
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder


def test_plot_writes_png_charts_into_the_run_folder_or_out(tmp_path):
    run = _run_folder(tmp_path / "run", rounds=3)
    p = _report(str(run), "--plot")
    assert p.returncode == 0, p.stderr
    expected = [run / "plots" / f"{c}.png" for c in CHARTS]
    assert p.stdout.split() == [str(f) for f in expected]
    for f in expected:
        data = f.read_bytes()
        assert data.startswith(PNG) and len(data) > 1000, f
    p = _report(str(run), "--plot", "--out", str(tmp_path / "charts"))
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in (tmp_path / "charts").iterdir()) == sorted(f"{c}.png" for c in CHARTS)


def test_a_run_folder_without_rounds_is_one_line_and_exit_2(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"type": "join", "time": 0.1, "client": "client-0"}) + "\n")
    p = _report(str(run), "--plot")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "no round records" in p.stderr, p.stderr
    assert not (run / "plots").exists()


def test_without_matplotlib_plot_says_what_to_install_in_one_line(tmp_path):
    run = _run_folder(tmp_path / "run", rounds=1)
    shadow = tmp_path / "shadow" / "matplotlib"  # an import of matplotlib fails, as when it is not installed
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(shadow.parent),
                                                                     os.environ.get("PYTHONPATH")])))
    p = _report(str(run), "--plot", env=env)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "fedlora[plot]" in p.stderr, p.stderr
