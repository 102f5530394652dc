"""A client imports what its role needs: start-up is time every client waits before round 1."""

from __future__ import annotations

import subprocess
import sys


def test_a_client_that_runs_no_dp_does_not_import_opacus():
    """opacus' accountants took 1.8 s of a client's 3.7 s of imports (scipy.stats, torch's
    distributed tensors); only a DP run needs them, so they are imported when it does."""
    code = "import sys, fedlora.client.app\nprint('opacus' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
