"""The connector contract (tests/contract.py) for ServiceNow (Table API, incident table), against
sandbox/servicenow.py.

Platform facts the hooks rely on (ServiceNow docs: "Table API", "Inbound REST API rate limiting"):
- The Table API has no export lag and no tombstones: a deleted record vanishes, `GET .../{sys_id}` answers 404
  `{"error": {"message": "No Record found", ...}, "status": "failure"}`.
- Journal fields: `work_notes` are internal, `comments` are visible to the caller.
- A 429 carries `Retry-After` with the `X-RateLimit-*` headers; a missing or bad login answers 401
  "User Not Authenticated".
- Incident `state` is a choice code; "6" is Resolved.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from connectors.base import RawRecord
from sandbox.base import Fault, SimClock
from sandbox.servicenow import ServiceNowSandbox
from tests.contract import ConnectorContract

USER = "contract.bot"
PASSWORD = "sn-contract-password-77e2"
DATE = "%Y-%m-%d %H:%M:%S"


def failure(message: str, detail: str) -> str:
    """The Table API's error body."""
    return json.dumps({"error": {"message": message, "detail": detail}, "status": "failure"})


class TestServiceNowContract(ConnectorContract):
    platform = "servicenow"
    base_url = "https://acme.service-now.com"
    credentials: ClassVar[dict[str, str]] = {"username": "SN_USER", "password": "SN_PASSWORD"}
    environ: ClassVar[dict[str, str]] = {"SN_USER": USER, "SN_PASSWORD": PASSWORD}
    bogus_environ: ClassVar[dict[str, str]] = {"SN_USER": USER, "SN_PASSWORD": "not-the-password-0000"}
    export_lag = timedelta(0)
    exports_tombstones = False
    poll_path = r"^/api/now/table/incident$"
    write_method = "PATCH"
    write_path = r"^/api/now/table/incident/[0-9a-f]{32}$"
    missing_id = "0" * 32

    def make_sandbox(self, clock: SimClock) -> ServiceNowSandbox:
        return ServiceNowSandbox(clock, seed=11)

    def all_refs(self, sandbox: ServiceNowSandbox) -> list[str]:
        return sandbox.incident_ids()

    def updated_at(self, sandbox: ServiceNowSandbox, ref: str) -> datetime:
        return datetime.strptime(sandbox.ticket(ref)["sys_updated_on"], DATE).replace(tzinfo=UTC)

    def touch(self, sandbox: ServiceNowSandbox, ref: str) -> None:
        sandbox.add_comment(ref, "Checked the logs again, nothing new on our side.", public=False)

    def close_ticket(self, sandbox: ServiceNowSandbox, ref: str) -> None:
        now = sandbox.clock.now().strftime(DATE)
        sandbox.update(ref, state="6", resolved_at=now, close_code="Solved (Permanently)", close_notes="Fixed.")

    def delete_ticket(self, sandbox: ServiceNowSandbox, ref: str) -> bool:
        sandbox.delete(ref)
        return True

    def comment_visibility(self, sandbox: ServiceNowSandbox, ref: str, marker: str) -> list[bool]:
        return [row["element"] == "comments" for row in sandbox.comments(ref) if marker in row["value"]]

    def rate_limit_fault(self, retry_after: int) -> Fault:
        return Fault(
            429,
            path_pattern=self.poll_path,
            headers={
                "Retry-After": str(retry_after),
                "X-RateLimit-Limit": "1000",
                "X-RateLimit-Rule": "a3c0e1f2b4d60210f877e3a1b7c0d9e2",
            },
            body=failure(
                "Rate limit exceeded", "Rate limit of 1000 requests per hour exceeded for rule 'escalation-sync'"
            ),
        )

    def auth_fault(self) -> Fault:
        return Fault(
            401,
            path_pattern=self.poll_path,
            body=failure("User Not Authenticated", "Required to provide Auth information"),
        )

    def require_credentials(self, sandbox: ServiceNowSandbox) -> bool:
        sandbox.credentials = (USER, PASSWORD)
        return True

    def inject_unknown_value(self, sandbox: ServiceNowSandbox, ref: str) -> tuple[str, str]:
        sandbox.update(ref, state="42")  # a state choice the instance added but the mapping does not list
        return "state", "42"

    def unknown_record(self, record: RawRecord) -> tuple[RawRecord, str, Any]:
        raise AssertionError("the ServiceNow sandbox expresses unknown values itself")
