"""The connector contract (tests/contract.py) for Jira Service Management Cloud, against sandbox/jsm.py.

Platform facts the hooks rely on (developer.atlassian.com):
- Search (`POST /rest/api/3/search/jql`) has no export lag; the connector re-reads an overlap window and
  de-duplicates it through its cursor, so the contract asserts zero duplicates.
- Jira has no tombstones in search: a deleted issue is simply gone, and `GET /rest/api/3/issue/{id}` answers
  404 "Issue does not exist or you do not have permission to see it."
- Rate limiting: a 429 carries `Retry-After` (seconds) and `X-RateLimit-Reset` (yyyy-MM-ddTHH:mmZ) and names
  the limit in `RateLimit-Reason`. https://developer.atlassian.com/cloud/jira/platform/rate-limiting/
- servicedeskapi comments carry `public`; an internal note has `public: false`.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any, ClassVar

from connectors.base import RawRecord
from sandbox.base import Fault, SimClock
from sandbox.jsm import JsmSandbox
from tests.contract import ConnectorContract, with_data


class TestJsmContract(ConnectorContract):
    platform = "jsm"
    base_url = "https://acme.atlassian.net"
    credentials: ClassVar[dict[str, str]] = {"email": "JSM_EMAIL", "api_token": "JSM_TOKEN"}
    environ: ClassVar[dict[str, str]] = {
        "JSM_EMAIL": "contract-bot@acme.example",
        "JSM_TOKEN": "jsm-contract-token-31f9",
    }
    bogus_environ: ClassVar[dict[str, str]] = {
        "JSM_EMAIL": "contract-bot@acme.example",
        "JSM_TOKEN": "not-the-token-0000",
    }
    export_lag = timedelta(0)
    exports_tombstones = False
    poll_path = r"^/rest/api/3/search/jql$"
    write_method = "PUT"
    write_path = r"^/rest/api/3/issue/[^/]+$"
    missing_id = "99999999"

    def make_sandbox(self, clock: SimClock) -> JsmSandbox:
        return JsmSandbox(clock, seed=11)

    def all_refs(self, sandbox: JsmSandbox) -> list[str]:
        return sandbox.issue_keys()

    def record_id(self, sandbox: JsmSandbox, ref: str) -> str:
        return str(sandbox.ticket(ref)["id"])

    def updated_at(self, sandbox: JsmSandbox, ref: str) -> datetime:
        return datetime.fromisoformat(sandbox.ticket(ref)["fields"]["updated"])

    def touch(self, sandbox: JsmSandbox, ref: str) -> None:
        sandbox.add_comment(ref, "Any news on this? It is still happening.", public=True, by_customer=True)

    def close_ticket(self, sandbox: JsmSandbox, ref: str) -> None:
        sandbox.update(ref, status="Resolved")

    def delete_ticket(self, sandbox: JsmSandbox, ref: str) -> bool:
        return False  # the sandbox has no deletion helper

    def comment_visibility(self, sandbox: JsmSandbox, ref: str, marker: str) -> list[bool]:
        return [bool(comment["public"]) for comment in sandbox.comments(ref) if marker in comment["body"]]

    def rate_limit_fault(self, retry_after: int) -> Fault:
        return Fault(
            429,
            method="POST",
            path_pattern=self.poll_path,
            headers={
                "Retry-After": str(retry_after),
                "X-RateLimit-Reset": "2026-11-17T14:31Z",
                "RateLimit-Reason": "jira-burst-based",
            },
            body="",
        )

    def auth_fault(self) -> Fault:
        return Fault(
            401,
            path_pattern=self.poll_path,
            headers={"WWW-Authenticate": 'Basic realm="protected-area"'},
            body='{"errorMessages": ["You are not authenticated. Authentication required to perform this '
            'operation."], "errors": {}}',
        )

    def unknown_record(self, record: RawRecord) -> tuple[RawRecord, str, Any]:
        # The sandbox only serves the five default priorities, so the unknown name goes into the payload.
        fields = copy.deepcopy(record.data["fields"])
        fields["priority"] = {
            "self": "https://acme.atlassian.net/rest/api/3/priority/10000",
            "name": "Showstopper",
            "id": "10000",
        }
        return with_data(record, fields=fields), "priority", "Showstopper"
