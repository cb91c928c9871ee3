"""The connector contract (tests/contract.py) for Zendesk Support, against sandbox/zendesk.py.

Platform facts the hooks rely on (developer.zendesk.com):
- Incremental Ticket Export, cursor based: changes of the last minute are left out of the export, and deleted
  tickets are exported with `status: "deleted"` (tombstones) unless `exclude_deleted=true`.
  https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/
- A deleted ticket answers 404 `RecordNotFound` on show; a bad login answers 401 "Couldn't authenticate you".
- API token authentication is basic auth with `{email}/token` as the user name and the token as the password.
  https://developer.zendesk.com/api-reference/introduction/security-and-auth/
- A 429 carries `Retry-After` in seconds. https://developer.zendesk.com/api-reference/introduction/rate-limits/
- Comments are internal notes when `public` is false.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any, ClassVar

from connectors.base import RawRecord
from sandbox.base import Fault, SimClock
from sandbox.zendesk import (
    ERROR_UNAUTHENTICATED,
    FIELD_SEVERITY,
    UNMAPPED_SEVERITY,
    ZendeskSandbox,
    rate_limited_response,
)
from tests.contract import ConnectorContract

EMAIL = "contract-bot@acme.example"
TOKEN = "zd-contract-token-8c41"


class TestZendeskContract(ConnectorContract):
    platform = "zendesk"
    base_url = "https://acme.zendesk.com"
    credentials: ClassVar[dict[str, str]] = {"email": "ZD_EMAIL", "api_token": "ZD_TOKEN"}
    environ: ClassVar[dict[str, str]] = {"ZD_EMAIL": EMAIL, "ZD_TOKEN": TOKEN}
    bogus_environ: ClassVar[dict[str, str]] = {"ZD_EMAIL": EMAIL, "ZD_TOKEN": "not-the-token-0000"}
    export_lag = timedelta(seconds=60)
    exports_tombstones = True
    poll_path = r"^/api/v2/incremental/tickets/cursor\.json$"
    write_method = "PUT"
    write_path = r"^/api/v2/tickets/\d+\.json$"
    missing_id = "999999"

    def make_sandbox(self, clock: SimClock) -> ZendeskSandbox:
        return ZendeskSandbox(clock, seed=11)

    def ref(self, ticket_id: str) -> int:
        return int(ticket_id)

    def all_refs(self, sandbox: ZendeskSandbox) -> list[int]:
        return sandbox.ticket_ids(include_deleted=True)

    def updated_at(self, sandbox: ZendeskSandbox, ref: int) -> datetime:
        return datetime.fromisoformat(sandbox.ticket(ref)["updated_at"])

    def touch(self, sandbox: ZendeskSandbox, ref: int) -> None:
        sandbox.add_comment(ref, "Checked the logs again, nothing new on our side.", public=False)

    def close_ticket(self, sandbox: ZendeskSandbox, ref: int) -> None:
        sandbox.update(ref, status="solved")

    def delete_ticket(self, sandbox: ZendeskSandbox, ref: int) -> bool:
        sandbox.delete(ref)
        return True

    def comment_visibility(self, sandbox: ZendeskSandbox, ref: int, marker: str) -> list[bool]:
        return [bool(comment["public"]) for comment in sandbox.comments(ref) if marker in comment["body"]]

    def rate_limit_fault(self, retry_after: int) -> Fault:
        response = rate_limited_response(retry_after)
        return Fault(
            429,
            path_pattern=self.poll_path,
            headers=dict(response.headers),
            body=str(response.body),
            content_type=response.content_type,
        )

    def auth_fault(self) -> Fault:
        return Fault(
            401,
            path_pattern=self.poll_path,
            headers={"WWW-Authenticate": 'Basic realm="Web Password"'},
            body=f'{{"error": "{ERROR_UNAUTHENTICATED["error"]}"}}',
        )

    def require_credentials(self, sandbox: ZendeskSandbox) -> bool:
        encoded = base64.b64encode(f"{EMAIL}/token:{TOKEN}".encode()).decode()
        sandbox.accepted_authorizations = {f"Basic {encoded}"}
        return True

    def inject_unknown_value(self, sandbox: ZendeskSandbox, ref: int) -> tuple[str, str]:
        # A retired severity option: mappings/zendesk.toml reads the severity field before the priority.
        sandbox.update(ref, custom_fields=[{"id": FIELD_SEVERITY, "value": UNMAPPED_SEVERITY}])
        return "priority", UNMAPPED_SEVERITY

    def unknown_record(self, record: RawRecord) -> tuple[RawRecord, str, Any]:
        raise AssertionError("the Zendesk sandbox expresses unknown values itself")
