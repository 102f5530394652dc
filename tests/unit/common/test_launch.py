"""Start-up is measured from the process's launch by the kernel, not from when our code runs."""

from __future__ import annotations

import subprocess
import sys


def test_the_time_before_any_fedlora_code_runs_is_counted():
    code = ("import time; time.sleep(0.5)\n"
            "from fedlora.common.launch import seconds_since_launch\nprint(seconds_since_launch())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) >= 0.5  # a timer started at import would say ~0

