"""Library warnings that say nothing to a user stay out of fedlora's logs (shown with -v)."""

from __future__ import annotations

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
