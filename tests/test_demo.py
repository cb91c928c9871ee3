"""The demo as a new user reads it: the first handoff notes in full, a legend, and `--serve` keeping the sandboxes
up on the ports it prints until Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

import sync

ROOT = Path(__file__).resolve().parent.parent


def test_demo_serve_prints_its_ports_and_serves_until_interrupted() -> None:
    command = [sys.executable, str(ROOT / "sync.py"), "demo", "--serve", "--hours", "0.5", "--tickets", "5"]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert demo.stdout is not None
        urls: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while len(urls) < 3 and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if match := re.match(r"^sandbox (\S+): (http://127\.0\.0\.1:\d+)$", line.strip()):
                urls[match.group(1)] = match.group(2)
        assert set(urls) == {"demo-zendesk", "demo-jsm", "demo-servicenow"}
        time.sleep(0.5)
        assert demo.poll() is None, "still serving after the run"
        answer = httpx.get(f"{urls['demo-zendesk']}/api/v2/tickets/1001.json", auth=("demo@example.com", "x"))
        assert answer.status_code == 200 and answer.json()["ticket"]["id"] == 1001
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0


def test_the_first_handoff_notes_are_shown_in_full_then_counted(capsys) -> None:
    assert sync.main(["demo", "--hours", "1", "--tickets", "10"]) == 0
    out = capsys.readouterr().out
    shown = re.findall(r"^handoff note (\d) of (\d+), in full:\nEscalation handoff: ", out, re.M)
    assert [number for number, _ in shown] == ["1", "2", "3"]
    total = int(shown[0][1])
    assert f"... and {total - 3} more handoff notes" in out
    assert re.search(r"^polled: records read", out, re.M), "the legend"
