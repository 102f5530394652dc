"""The README demo, as written: default model and data, 4 clients, 5 rounds (2-4 minutes)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_converges_and_prints_what_summary_says(tmp_path):
    run_dir = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "fedlora.deploy.cli", "run", "--config",
                        str(ROOT / "deploy" / "demo.yaml"), "--run-dir", str(run_dir), "--no-live"],
                       capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout + p.stderr
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["rounds_completed"] == 5 and s["final_accuracy"] >= 0.80
    assert f"final test accuracy: {s['final_accuracy']:.4f}" in p.stdout
    up = s["bytes"]["up"]
    assert f"payload {up['payload_bytes']:,}" in p.stdout
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
