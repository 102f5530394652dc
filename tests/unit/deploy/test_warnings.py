"""Library warnings and progress bars that say nothing to a user stay out of fedlora's logs
(warnings are shown with -v)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from fedlora.deploy.cli import setup_logging

OURS = "something a fedlora user should hear about"


def _shown(verbose: bool) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        setup_logging(verbose)
        warnings.warn_explicit("`is_gradient_checkpointing` is deprecated", FutureWarning,
                               "modeling_utils.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("Full backward hook is firing when gradients are computed",
                               UserWarning, "module.py", 1, module="torch.nn.modules.module")
        warnings.warn_explicit(OURS, UserWarning, "trainer.py", 1, module="fedlora.client.trainer")
    return [str(w.message) for w in seen]


@pytest.mark.parametrize("verbose, count", [(False, 1), (True, 3)])
def test_library_noise_stays_out_unless_verbose(verbose, count):
    shown = _shown(verbose)
    assert len(shown) == count and OURS in shown


def test_library_progress_bars_stay_out_of_a_log_file():
    """transformers draws a tqdm bar while it dequantises a GGUF base: thousands of characters
    of carriage returns in a client's log file. The CLI turns tqdm off where stderr is not a
    terminal (before tqdm is first imported, which is when it reads that)."""
    code = ("import fedlora.deploy.cli\nfrom tqdm.auto import tqdm\n"
            "for _ in tqdm(range(3), desc='dequantising'): pass\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "dequantising" not in p.stderr
