"""`sync.py check --live`: the mapping checked against the instance it is for, through its metadata APIs.

The offline check proves a mapping well formed; only the instance knows whether its field ids, option values,
groups, statuses and priorities exist. Each platform's metadata is read (GETs only, through the same HTTP
layer as the daemon) and every name the mapping uses is looked up:

- Zendesk: `GET /api/v2/ticket_fields` (the priority, tier and flag custom fields, the dropdown option values
  the mapping names), `GET /api/v2/groups` (the tier groups);
- Jira: `GET /rest/api/3/field` (every field the mapping reads), the tier field's options
  (`/rest/api/3/field/{id}/context` and `.../context/{ctx}/option`), `GET /rest/api/3/status` and
  `GET /rest/api/3/priority`;
- ServiceNow: `sys_dictionary` (every field the mapping reads, on the table and `task`, which incident
  extends), `sys_choice` (the state and priority codes), `sys_user_group` (the tier groups).

And the credentials' rights, where the platform can say without a write: Zendesk `users/me` (the incremental
exports need an admin), Jira `mypermissions` (browse, edit, comment), ServiceNow a one-row read of the table,
`sys_audit` and `sys_journal_field` (its write rights cannot be tested without writing: a warning says so).

An error is something that breaks the sync: a field, option or group that does not exist, and a priority or
status of the instance the mapping cannot place (its tickets would be quarantined). A mapped name the instance
does not have is only a warning (it is never used there; the default mappings name both Jira schemes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from connectors.base import AuthError
from connectors.http import HttpClient, path_segment
from mappings import PlatformMapping


@dataclass(frozen=True)
class Finding:
    level: str
    """"ok", "warning" or "error"."""
    what: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class LiveCheckError(Exception):
    """The metadata could not be read (no rights, not found): the check cannot say, so it fails."""


def _get(http: HttpClient, path: str, params: dict[str, str] | None = None) -> Any:
    response = http.request("GET", path, params=params)
    if response.status_code != 200:
        raise LiveCheckError(f"GET {path} answered {response.status_code}: {response.text[:200]}")
    return response.json()


def _present(kind: str, wanted: Iterable[str], known: set[str], where: str) -> list[Finding]:
    out = []
    for name in sorted(set(wanted)):
        if name in known:
            out.append(Finding("ok", f"{kind} {name}", f"exists on {where}"))
        else:
            out.append(Finding("error", f"{kind} {name}", f"not found on {where}"))
    return out


def check_zendesk(http: HttpClient, mapping: PlatformMapping) -> list[Finding]:
    spec = mapping.config  # type: ignore[attr-defined]
    fields: dict[str, dict[str, Any]] = {}
    url: str | None = "/api/v2/ticket_fields.json"
    while url:
        body = _get(http, url)
        fields.update({str(item["id"]): item for item in body.get("ticket_fields", [])})
        url = body.get("next_page")
    wanted = [spec.priority.field_id, spec.tier.field_id if spec.tier.mode == "custom_field" else None]
    for name in type(spec.flags).model_fields:
        wanted.append(getattr(getattr(spec.flags, name), "custom_field", None))
    findings = _present("ticket field", (str(i) for i in wanted if i), set(fields), "ticket_fields")
    for field_id, values, what in (
        (spec.priority.field_id, spec.priority.field_values, "priority.field_values"),
        (spec.tier.field_id, {v: t for t, v in spec.tier.options.items()}, "tier.options"),
    ):
        if field_id and str(field_id) in fields and values:
            options = {str(o.get("value")) for o in fields[str(field_id)].get("custom_field_options") or []}
            findings += _present(f"{what} option", values, options, f"ticket field {field_id}")
    if spec.tier.mode == "group":
        groups: set[str] = set()
        url = "/api/v2/groups.json"
        while url:
            body = _get(http, url)
            groups |= {str(group["id"]) for group in body.get("groups", []) if not group.get("deleted")}
            url = body.get("next_page")
        findings += _present("tier group", (str(g) for g in spec.tier.groups.values()), groups, "groups")
    user = _get(http, "/api/v2/users/me.json").get("user") or {}
    role = user.get("role")
    # The incremental ticket and event exports the daemon polls are admin-only; agents may write and comment.
    level, detail = (
        ("ok", "admin: read (incremental exports), write and comment")
        if role == "admin"
        else ("error", f"role {role!r}: the incremental exports the daemon reads need an admin")
    )
    findings.append(Finding(level, "credentials", detail))
    return findings


def check_jsm(http: HttpClient, mapping: PlatformMapping) -> list[Finding]:
    spec = mapping.spec  # type: ignore[attr-defined]
    fields = {str(field["id"]) for field in _get(http, "/rest/api/3/field")}
    wanted = list(mapping.read_spec().fields)  # type: ignore[attr-defined]
    findings = _present("field", wanted, fields, "/rest/api/3/field")
    tier = spec.tier.field
    if tier in fields:
        options: set[str] = set()
        for context in _get(http, f"/rest/api/3/field/{path_segment(tier)}/context").get("values", []):
            path = f"/rest/api/3/field/{path_segment(tier)}/context/{path_segment(context['id'])}/option"
            for option in _get(http, path).get("values", []):
                if not option.get("disabled"):
                    options |= {str(option.get("value")), str(option.get("id"))}
        by = spec.tier.write_by
        wanted_options = [getattr(option, by) or option.value for option in spec.tier.options.values()]
        findings += _present("tier option", wanted_options, options, f"field {tier}")
    mapped = {name.casefold() for name in spec.priority.values}
    seen: set[str] = set()
    for priority in _get(http, "/rest/api/3/priority"):
        name = str(priority.get("name"))
        seen.add(name.casefold())
        level = "ok" if name.casefold() in mapped else "error"
        findings.append(Finding(level, f"priority {name}", "mapped" if level == "ok" else "not in priority.values"))
    unused = sorted(name for name in spec.priority.values if name.casefold() not in seen)
    if unused:
        findings.append(Finding("warning", "priority.values", f"not on this instance (unused): {', '.join(unused)}"))
    names = {name.casefold() for name in spec.status.names}
    seen = set()
    for status in _get(http, "/rest/api/3/status"):
        name, category = str(status.get("name")), (status.get("statusCategory") or {}).get("key")
        seen.add(name.casefold())
        placed = name.casefold() in names or category in spec.status.categories
        detail = "mapped" if placed else f"not in status.names, category {category!r} not in status.categories"
        findings.append(Finding("ok" if placed else "error", f"status {name}", detail))
    unused = sorted(name for name in spec.status.names if name.casefold() not in seen)
    if unused:
        findings.append(Finding("warning", "status.names", f"not on this instance (unused): {', '.join(unused)}"))
    wanted_rights = ("BROWSE_PROJECTS", "EDIT_ISSUES", "ADD_COMMENTS")
    rights = _get(http, "/rest/api/3/mypermissions", {"permissions": ",".join(wanted_rights)}).get("permissions", {})
    for key in wanted_rights:
        have = bool((rights.get(key) or {}).get("havePermission"))
        detail = "granted (in at least one project)" if have else "not granted: the daemon needs it"
        findings.append(Finding("ok" if have else "error", f"permission {key}", detail))
    return findings


def check_servicenow(http: HttpClient, mapping: PlatformMapping, table: str = "incident") -> list[Finding]:
    spec = mapping.spec  # type: ignore[attr-defined]
    read = {name.split(".", 1)[0] for name in mapping.poll_fields() if name}  # type: ignore[attr-defined]
    query = f"nameIN{table},task^elementIN{','.join(sorted(read))}"
    rows = _get(http, "/api/now/table/sys_dictionary", {"sysparm_query": query, "sysparm_fields": "name,element"})
    known = {row["element"] for row in rows.get("result", [])}
    findings = _present("field", read, known, f"sys_dictionary ({table}, task)")
    for element, codes, what in (
        (spec.fields.status, spec.status.values, "status.values"),
        (spec.fields.priority, spec.priority.values, "priority.values"),
    ):
        params = {
            "sysparm_query": f"nameIN{table},task^element={element}^inactive=false",
            "sysparm_fields": "value,label",
        }
        choices = {
            row["value"]: row.get("label", "") for row in _get(http, "/api/now/table/sys_choice", params)["result"]
        }
        for value, label in sorted(choices.items()):
            placed = value in codes
            detail = f"{label!r} mapped" if placed else f"{label!r} is not in {what}: its tickets would be quarantined"
            findings.append(Finding("ok" if placed else "error", f"{element} choice {value}", detail))
        for value in sorted(set(codes) - set(choices)):
            findings.append(Finding("warning", f"{what} {value}", f"no such {element} choice on {table}"))
    if spec.tier.field == "assignment_group":
        ids = sorted(spec.tier.values.values())
        params = {"sysparm_query": f"sys_idIN{','.join(ids)}", "sysparm_fields": "sys_id,name"}
        groups = {row["sys_id"] for row in _get(http, "/api/now/table/sys_user_group", params)["result"]}
        findings += _present("tier group", ids, groups, "sys_user_group")
    # The reads the daemon makes; a table the read ACLs refuse answers 403. Writes cannot be tested without
    # writing: the first cycle's dead letters name a refused write.
    for read in (table, "sys_audit", "sys_journal_field"):
        try:
            params = {"sysparm_limit": "1", "sysparm_fields": "sys_id"}
            status = http.request("GET", f"/api/now/table/{read}", params=params).status_code
        except AuthError as error:  # the HTTP layer raises on 401/403
            status = error.status or 403
        ok = status == 200
        detail = "readable" if ok else f"answered {status}: the daemon reads it"
        findings.append(Finding("ok" if ok else "error", f"read {read}", detail))
    findings.append(Finding("warning", "write rights", "not checked: ServiceNow has no read-only way to test them"))
    return findings


def check_live(platform: str, http: HttpClient, mapping: PlatformMapping, options: dict[str, Any]) -> list[Finding]:
    """Every finding for one instance; LiveCheckError when its metadata cannot be read."""
    if platform == "zendesk":
        return check_zendesk(http, mapping)
    if platform == "jsm":
        return check_jsm(http, mapping)
    return check_servicenow(http, mapping, str(options.get("table", "incident")))
