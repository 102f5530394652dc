"""The `fedlora` command as a user runs it: bad configuration is one line and exit 2; every
subcommand has help."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv, field", [
    (["server", "--set", "training.learning_rate=-1"], "training.learning_rate"),
    (["server", "--rounds", "0"], "rounds"),
    (["server", "--strategy", "fedsgd-magic"], "strategy"),
    (["client", "--id", "bad id!"], "client_id"),
    (["server", "--metrics-port", "70000"], "metrics_port"),
])
def test_cli_bad_config_is_one_line_exit_2(argv, field):
    p = subprocess.run([sys.executable, "-m", "fedlora.deploy.cli", *argv], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], p.stderr


def test_every_subcommand_has_help():
    for sub in ("server", "client", "run"):
        p = subprocess.run([sys.executable, "-m", "fedlora.deploy.cli", sub, "--help"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and "--config" in p.stdout
