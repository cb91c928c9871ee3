"""The HTTP layer's waits as the daemon process lives them: SIGTERM ends a Retry-After wait at once.

Issue 10 measured `run` still waiting 150 s after SIGTERM during a `Retry-After: 120`. Here the real daemon
(`sync.py run`, a subprocess) polls a Zendesk sandbox on loopback that answers every request with that 429.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.soak import ENVIRON, write_config
from sandbox.base import SimClock
from sandbox.zendesk import ZendeskSandbox

ROOT = Path(__file__).resolve().parent.parent


def test_sigterm_during_a_retry_after_wait_stops_the_daemon_at_once(tmp_path: Path) -> None:
    sandbox = ZendeskSandbox(SimClock(datetime.now(UTC)), seed=5)
    sandbox.seed_tickets(5)
    sandbox.rate_limit_fault(times=1000, retry_after=120)
    base_url, stop_server = sandbox.serve()
    config = write_config(tmp_path, {"zendesk": base_url})
    daemon = subprocess.Popen(
        [sys.executable, str(ROOT / "sync.py"), "run", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENVIRON, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 30
        while sandbox.calls() == 0 and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.05)
        assert sandbox.calls() == 1, "the daemon must be waiting out the Retry-After"
        time.sleep(0.3)
        signalled = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        _, logged = daemon.communicate(timeout=20)
        stopped_after = time.monotonic() - signalled
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        stop_server()
    assert stopped_after < 5, f"still waiting {stopped_after:.1f} s after SIGTERM"
    assert sandbox.calls() == 1, "nothing may be sent after the stop"
    assert "stop requested during a wait" in logged
    assert ENVIRON["SOAK_ZD_TOKEN"] not in logged
