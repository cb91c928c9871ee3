"""Run tap-zendesk, unchanged, against a Zendesk stand-in on a loopback http URL (runs inside bench/.peer-venv).

Why a runner: tap-zendesk builds every URL as `https://{subdomain}.zendesk.com/...` (stream endpoints, zenpy,
the OAuth check), with no setting for another host. All of its HTTP goes through `requests.Session.request`
(`requests.get` opens a session too; the tap itself patches that method for its metrics), so re-basing that
one method sends the very requests the tap would send to Zendesk to the stand-in instead: same paths, same
parameters, same pacing. Nothing else of the tap is touched.

Why the catalog is written here rather than by `--discover`: discovery probes every stream (organizations,
users, SLA policies, custom fields...) the stand-in does not serve. The tickets stream has no custom-field
discovery, so its catalog is exactly the tap's own schema and metadata with the stream selected, as a user
selecting `tickets` would have it.

Usage: python run_tap.py BASE_URL SUBDOMAIN START_DATE ACCESS_TOKEN WORKDIR
Singer messages go to stdout, the tap's log to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def rebase(base_url: str, subdomain: str) -> None:
    """Send every request the tap makes to https://{subdomain}.zendesk.com to base_url instead."""
    import requests

    origin = f"https://{subdomain}.zendesk.com"
    inner = requests.Session.request

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if isinstance(url, str) and url.startswith(origin):
            url = base_url + url[len(origin) :]
        return inner(self, method, url, *args, **kwargs)

    requests.Session.request = request  # type: ignore[method-assign]


def catalog(config: dict[str, Any]) -> dict[str, Any]:
    from tap_zendesk.streams import STREAMS

    stream = STREAMS["tickets"](None, config)
    metadata = stream.load_metadata()
    for entry in metadata:
        entry["metadata"]["selected"] = True
    return {
        "streams": [
            {"tap_stream_id": "tickets", "stream": "tickets", "schema": stream.load_schema(), "metadata": metadata}
        ]
    }


def main(argv: list[str]) -> int:
    base_url, subdomain, start_date, token, workdir = argv
    import tap_zendesk  # patches requests.Session.request for its metrics; ours wraps it

    rebase(base_url.rstrip("/"), subdomain)
    config = {"subdomain": subdomain, "start_date": start_date, "access_token": token}
    directory = Path(workdir)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (directory / "catalog.json").write_text(json.dumps(catalog(config)), encoding="utf-8")
    sys.argv = ["tap-zendesk", "--config", str(directory / "config.json"), "--catalog", str(directory / "catalog.json")]
    tap_zendesk.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
