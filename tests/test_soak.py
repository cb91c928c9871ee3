"""bench/soak.py at a tiny size: real daemon processes on the loopback sandboxes, seeded faults and one kill -9.

The full-size soak (a few minutes) is `python bench/soak.py`; this keeps its harness working and its first
promise checked in CI: no handoff note is ever posted twice, whatever the wire and the kills do.
"""

from __future__ import annotations

import io

from bench.soak import Plan, run


def test_a_tiny_soak_posts_no_comment_twice() -> None:
    out = io.StringIO()
    plan = Plan(seed=3, cycles=2, kills=1, tickets=8, fault_rate=0.25, flush=1, kill_window=6)
    figures = run(plan, out=out)
    assert figures["kills"] == 1, out.getvalue()
    assert figures["faults_injected"] > 0 and figures["handoff_notes"] > 0, out.getvalue()
    assert figures["duplicate_comments"] == 0, out.getvalue()
    assert figures["duplicate_comments_clean"] == 0
    assert figures["cursor_regressions"] == 0 and figures["crash_loops"] == 0, out.getvalue()
    lines = out.getvalue().splitlines()
    assert lines and all(len(line.split()) == 3 for line in lines if not line.startswith("#"))
