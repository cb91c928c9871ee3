"""`demo --serve`: the sandboxes keep listening after the run, on the ports the demo prints, until Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

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
