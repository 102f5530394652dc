"""`fedlora run`'s one-line reason for a dead process, from its log."""

import signal

import pytest

from fedlora.deploy.exits import Exit, last_error

INFO = "2026-11-23 20:35:30,291 fedlora.client INFO joined 127.0.0.1:41351 as client-0"


@pytest.mark.parametrize("lines, reason", [
    ([INFO, "fedlora client: error: data: the run has no built-in data split; pass --data FILE"],
     "data: the run has no built-in data split; pass --data FILE"),
    ([INFO, "fedlora server: storage error: run folder /r: read-only file system"],
     "storage error: run folder /r: read-only file system"),
    (["2026-11-23 20:35:31,000 fedlora.client ERROR the run failed: run folder /r: full", INFO,
      "2026-11-23 20:35:32,000 fedlora.client WARNING coordinator unavailable; retrying"],
     "the run failed: run folder /r: full"),
    ([INFO, "Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
      "    boom()", "RuntimeError: boom", ""], "RuntimeError: boom"),
    ([INFO, INFO], ""),
])
def test_last_error_is_the_line_that_says_what_went_wrong(tmp_path, lines, reason):
    log = tmp_path / "client-0.log"
    log.write_text("\n".join(lines) + "\n")
    assert last_error(log) == reason


def test_no_log_no_reason(tmp_path):
    assert last_error(tmp_path / "missing.log") == ""


def test_exit_lines(tmp_path):
    log = tmp_path / "c.log"
    log.write_text("fedlora client: error: data: bad file\n")
    assert str(Exit.of("client-2", 2, log)) == "client-2 exited 2: data: bad file"
    # killed by a signal: the log's last error is not why it died
    assert str(Exit.of("coordinator", -signal.SIGKILL, log)) == "coordinator was killed by SIGKILL"
    log.write_text(INFO + "\n")
    assert str(Exit.of("client-0", 1, log)) == "client-0 exited 1 (nothing in its log says why)"
