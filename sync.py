"""escalation-sync: the command line and the daemon loop. Thin on purpose: wiring, signals, scheduling.

python sync.py demo [--json]            the daemon against the built-in sandboxes (no credentials)
python sync.py check  [--config F]      validate config, mappings and policy; say what is wrong (--live: on the instance)
python sync.py once   [--config F]      one cycle per instance (for cron); --dry-run writes nothing
python sync.py run    [--config F]      loop every interval; SIGTERM/SIGINT finish the ticket and stop
python sync.py status [--config F]      the book of open tickets, pending writes, dead letters, quarantine
python sync.py backfill --instance N    read every open ticket of N again into the book (with progress)
python sync.py explain ...              why a ticket is (or is not) escalated
python sync.py init DIR                 write a starting config.toml and mappings/ into DIR
python sync.py report [--since] [--html F]  the escalation dashboard from the state store's history
python sync.py record --instance N --out D  one read-only cycle, every HTTP exchange saved as a fixture
python sync.py replay D [--expect PLAN]     that cycle again on the fixtures only; the plan, or its diff
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connectors.base import ConnectorError
from engine.configfile import ConfigFileError
from engine.escalate import evaluate
from engine.plan import plan
from engine.policy import load_policy
from engine.report import explain, explain_dict
from escalation_sync import __version__, resources
from mappings import NormalizeError, load_mapping
from runtime import logs
from runtime.config import AppConfig, InstanceSection, Settings, environment, load_config
from runtime.cycle import SCAN_DONE, Event
from runtime.explain_input import Skipped, history_for, on_instance, open_history_store, records_in
from runtime.notify import LEDGER_PREFIX as NOTIFY_LEDGER
from runtime.notify import Notifier
from runtime.notify import check as check_notifications
from runtime.notify import start as start_notifier
from runtime.report import add_arguments as add_report_arguments
from runtime.report import run as run_report
from runtime.wiring import Wired, build_connector, load_instance_mapping, wire
from state import LeaseLostError, StoreError, StoreUrlError, open_store
from state.base import Intent, Lease, Store
from state.lease import FencedStore, LeaseKeeper, exclusive_file
from state.sql import SCAN_SUFFIX
from state.sqlite import path_from_url

if TYPE_CHECKING:  # imported by `run` only (prometheus_client): `once` from cron and the other commands need none
    from runtime.metrics import Metrics

EXAMPLE_CONFIG = resources.example_config()
log = logging.getLogger("escalation_sync")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _load(args: argparse.Namespace) -> AppConfig:
    settings = Settings()
    path = Path(args.config) if args.config else settings.config
    return load_config(path, settings)


def _state_url_problem(url: str) -> str | None:
    """What is wrong with `[state] url`, found without opening (or creating) the store."""
    scheme = url.partition("://")[0].lower()
    try:
        if scheme == "sqlite":
            path_from_url(url)
        elif scheme not in ("postgresql", "postgres"):
            open_store(url)  # refuses any other scheme before connecting to anything
    except StoreError as error:
        return str(error)
    return None


def _print_problems(what: str, error: ConfigFileError, out: Any = None) -> int:
    """One line per problem of a file (ConfigFileError.problems): an admin fixes them all in one pass."""
    for problem in error.problems:
        print(f"error {what}: {problem.headline}", file=out)
    return len(error.problems)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigFileError as error:  # on stderr, as `once` and `run` report it; one line per problem
        for problem in error.problems:
            print(f"configuration error: {problem.headline}", file=sys.stderr)
        return 2
    problems = 0
    out = sys.stderr if args.live and args.json else sys.stdout  # --json: stdout is the JSON document alone
    for what, problem in (
        ("state", _state_url_problem(config.state_url)),
        ("logging", logs.level_problem(Settings().log_level)),
    ):
        if problem:
            problems += 1
            print(f"error {what}: {problem}", file=out)
    for section in config.instances:
        found = problems
        try:
            load_instance_mapping(config, section)
        except ConfigFileError as error:
            problems += _print_problems(section.name, error, out)
        try:  # a missing variable is reported beside a broken mapping, not hidden by it
            section.read_credentials(environment())
        except ConfigFileError as error:
            problems += _print_problems(section.name, error, out)
        if problems == found:
            print(f"ok    {section.name} ({section.platform}) -> {section.url}", file=out)
    try:
        print(f"ok    notifications: {check_notifications(config.path, environment())}", file=out)
    except ConfigFileError as error:
        problems += _print_problems("notifications", error, out)
    rules = len(config.policy.rules)
    print(f"ok    policy: {rules} rules" if not problems else f"{problems} problem(s) found", file=out)
    # The exit code `once` and `run` give for the same problem: a broken mapping or a missing variable is
    # configuration, whichever command finds it.
    if problems:
        return 2
    return _check_live(config, args) if args.live else 0


def _check_live(config: AppConfig, args: argparse.Namespace) -> int:
    """`check --live`: the mappings against each instance's metadata (runtime/live_check.py); 1 on any error."""
    from runtime.live_check import LiveCheckError, check_live

    selected = [s for s in config.instances if not args.instance or s.name in args.instance]
    report: dict[str, list[dict[str, str]]] = {}
    for section in selected:
        mapping = load_instance_mapping(config, section)
        http, connector = build_connector(section, mapping, environment())
        try:
            findings = [f.as_dict() for f in check_live(section.platform, http, mapping, section.options)]
        except (LiveCheckError, ConnectorError) as error:
            findings = [{"level": "error", "what": "metadata", "detail": _one_line(error)}]
        finally:
            connector.close()
            http.close()
        report[section.name] = findings
    errors = sum(1 for findings in report.values() for f in findings if f["level"] == "error")
    if args.json:
        print(json.dumps({"instances": report, "errors": errors}, indent=2))
    else:
        for name, findings in report.items():
            for finding in findings:
                level = {"ok": "ok   ", "warning": "warn ", "error": "error"}[finding["level"]]
                print(f"{level} {name} live: {finding['what']}: {finding['detail']}")
        print(f"live: {errors} error(s)" if errors else "live: every field, option, group, status and priority found")
    return 1 if errors else 0


Running = tuple[list[Wired], Notifier | None]


def _wire_all(config: AppConfig, args: argparse.Namespace, store: Store, stop: threading.Event) -> Running:
    """Every selected instance wired, and the notifier its written events feed (when notifications.toml has
    routes; never in a dry run, which writes nothing to notify about)."""
    selected = [s for s in config.instances if not args.instance or s.name in args.instance]
    if not selected:
        known = ", ".join(s.name for s in config.instances) or "none configured"
        raise ConfigFileError(
            config.path, f"no instance selected (--instance {', '.join(args.instance or [])}; known: {known})"
        )
    notifier = None if args.dry_run else start_notifier(config.path, config.state_url, environment())
    wired: list[Wired] = []
    try:
        for section in selected:
            instance = wire(
                config, section, store, environ=environment(), clock=utcnow, dry_run=args.dry_run, stop=stop,
                on_event=print_plan if args.dry_run else notifier.on_event if notifier else None,
            )  # fmt: skip
            wired.append(instance)
            if notifier is not None:
                notifier.watch(section.name, instance.mapping.tags)
    except BaseException:
        _close((wired, notifier))
        raise
    return wired, notifier


def _close(running: Running) -> None:
    wired, notifier = running
    for instance in wired:
        instance.close()
    if notifier is not None:
        notifier.close()


def _reload(
    args: argparse.Namespace, config: AppConfig, store: Store, running: Running, stop: threading.Event
) -> tuple[AppConfig, Store, Running]:
    """Config, mappings, policy and notifications read afresh (SIGHUP); a broken one is refused, the old kept."""
    try:
        new = _load(args)
        new_store = store if new.state_url == config.state_url else open_store(new.state_url)
        try:
            new_running = _wire_all(new, args, new_store, stop)
        except BaseException:
            if new_store is not store:
                new_store.close()
            raise
    except (ConfigFileError, StoreError, OSError) as error:
        log.error("reload refused, keeping the running configuration", extra={"error": str(error)})
        return config, store, running
    _close(running)
    if new_store is not store:
        store.close()
    log.info("configuration reloaded", extra={"path": str(new.path), "instances": len(new_running[0])})
    return new, new_store, new_running


def _exclusive(url: str) -> contextlib.AbstractContextManager[None]:
    """SQLite serves one daemon: the file's lock for as long as `run` or `once` works on it (state/lease.py)."""
    if url.lower().startswith("sqlite:") and path_from_url(url) != ":memory:":
        return exclusive_file(path_from_url(url))
    return contextlib.nullcontext()


def _fence(wired: list[Wired], keeper: LeaseKeeper | None) -> None:
    """With leases, each Syncer writes through a store that refuses writes once its lease is lost."""
    if keeper is None:
        return
    keeper.instances = sorted(w.section.name for w in wired)
    for instance in wired:
        if not isinstance(instance.syncer.store, FencedStore):
            instance.syncer.store = FencedStore(instance.syncer.store, instance.section.name)


GC_YOUNG_THRESHOLD = 50_000
"""Allocations between young-generation collections (CPython's default is 700, 2,000 from 3.13 on)."""
MMAP_THRESHOLD = 128 * 1024
"""Blocks of at least this size come from their own mappings, returned to the system when freed (glibc)."""
_M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter number for it (malloc.h)."""


def settle_memory() -> None:
    """What `once` and `run` do once everything is wired, before the first cycle (bench/memory.py does the
    same, so it measures the daemon's own settings): the collector's and then the allocator's."""
    _settle_collector()
    _settle_allocator()


def _settle_collector() -> None:
    """Move what start-up built (config, compiled policy, mappings, clients) out of the collector's sight and
    collect the young generation less often. A cycle allocates tens of objects per ticket, nearly all freed by
    reference counting at once; at CPython's default threshold the collector re-walks the long-lived heap over
    and over for no garbage (about a fifth of the engine's CPU, measured with the collector off), while a
    larger young generation holds a few MB more at most (what a cycle allocates in a reference cycle waits for
    it: the HTTP layer unbinds its responses, `connectors/http.py _unbind`, so no page body does)."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(GC_YOUNG_THRESHOLD, young), middle, old)


def _settle_allocator() -> bool:
    """Pin glibc's mmap threshold at its default of 128 KiB (issue 14, memory); False where there is no glibc.

    glibc raises the threshold each time a mapped block is freed, up to 32 MiB, so after the first page the
    megabyte-sized buffers of every page (a response body, its decoded text) come from the main heap instead,
    where a free block between live ones is never returned to the system: peak RSS then grows with the pages
    read. Pinned, each such buffer is mapped and unmapped on its own (a few system calls a page):
    bench/memory.py read 30,000 tickets peaked at 128 MB against 136 MB. Setting it also stops the dynamic
    adjustment, which is the point. Elsewhere (musl, macOS) nothing is changed, nor where the environment sets
    glibc's own `MALLOC_MMAP_THRESHOLD_` (an operator's choice stands)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def _run_cycles(
    config: AppConfig,
    args: argparse.Namespace,
    stop: threading.Event,
    forever: bool,
    metrics: Metrics | None = None,
    reload: threading.Event | None = None,
) -> int:
    with _exclusive(config.state_url):
        return _run_cycles_locked(config, args, stop, forever, metrics, reload)


def _run_cycles_locked(
    config: AppConfig,
    args: argparse.Namespace,
    stop: threading.Event,
    forever: bool,
    metrics: Metrics | None,
    reload: threading.Event | None,
) -> int:
    store = open_store(config.state_url)
    keeper: LeaseKeeper | None = None
    try:
        running = _wire_all(config, args, store, stop)
        if not config.state_url.lower().startswith("sqlite:") and not args.dry_run:
            url = config.state_url
            keeper = LeaseKeeper(
                lambda: open_store(url),
                [w.section.name for w in running[0]],
                config.daemon.lease_ttl_seconds,
                on_change=metrics.record_lease if metrics is not None else None,
            )
            _fence(running[0], keeper)
            keeper.start()
    except BaseException:
        if keeper is not None:
            keeper.stop()
        store.close()
        raise
    wired = running[0]
    settle_memory()
    failures = 0
    try:
        while True:
            held = set(keeper.holds()) if keeper is not None else {w.section.name for w in wired}
            if metrics is not None:
                metrics.expect(
                    ((w.section.name, w.section.platform) for w in wired if w.section.name in held),
                    config.daemon.interval_seconds,
                )
                for instance in wired:
                    if instance.section.name in held:
                        metrics.record_store(instance.section.name, instance.section.platform, store)
            started = utcnow()
            for instance in wired:
                if stop.is_set():
                    break
                began = time.monotonic()
                try:
                    with keeper.running(instance.syncer.store) if keeper else contextlib.nullcontext(True) as mine:
                        if not mine:  # another daemon runs it
                            if not forever:
                                log.info("run by another daemon, skipped", extra={"instance": instance.section.name})
                            continue
                        report = instance.syncer.run_cycle()
                except LeaseLostError as error:
                    # Another daemon took this instance over (this one was paused or cut off past the TTL):
                    # its writes were refused; step back and let the heartbeat share leases out again.
                    log.warning(
                        "lease lost, stepping back",
                        extra={"event": "lease_lost", "instance": instance.section.name, "error": str(error)},
                    )
                    if keeper is not None:
                        keeper.step_back(instance.section.name)
                    continue
                except (ConnectorError, StoreError, OSError) as error:
                    failures += 1
                    log.error("cycle failed", extra={"instance": instance.section.name, "error": str(error)})
                    if metrics is not None:
                        metrics.record_result(instance.section.name, False, str(error))
                    continue
                except Exception as error:
                    # A bug must not take the daemon down: nothing past the last committed cursor is lost, and
                    # the next cycle replays it. The traceback goes to the log for whoever fixes the bug.
                    failures += 1
                    log.exception("cycle crashed", extra={"instance": instance.section.name})
                    if metrics is not None:
                        metrics.record_result(instance.section.name, False, f"{type(error).__name__}: {error}")
                    continue
                failures += bool(report.error)
                log.info("cycle", extra={"event": "cycle", **report.as_dict()})
                if metrics is not None:
                    metrics.record_cycle(report, time.monotonic() - began)
                    metrics.record_http(instance.section.name, instance.http.stats)
                    metrics.record_store(instance.section.name, instance.section.platform, store)
            if not forever or stop.is_set():
                break
            wait_until = time.monotonic() + max(
                0.0, config.daemon.interval_seconds - (utcnow() - started).total_seconds()
            )
            while not stop.is_set() and not (reload and reload.is_set()) and time.monotonic() < wait_until:
                stop.wait(min(0.25, wait_until - time.monotonic()))
            if reload is not None and reload.is_set() and not stop.is_set():
                reload.clear()
                config, store, running = _reload(args, config, store, running, stop)
                wired = running[0]
                _fence(wired, keeper)
    finally:
        if keeper is not None:
            keeper.stop()  # SIGTERM: every lease released at once, the others take over without waiting
        _close(running)
        store.close()
    return 1 if failures and not forever else 0


def print_plan(event: Event) -> None:
    """One line per ticket a dry run would write: what an operator reads before going live."""
    if event.kind != "planned":
        return
    detail = event.detail
    tier = f"{detail['from_tier']} -> {detail['tier']}" if detail.get("tier") else "tier unchanged"
    tags = " ".join([*("+" + tag for tag in detail["add_tags"]), *("-" + tag for tag in detail["remove_tags"])])
    note = "handoff note" if detail["comment"] else "no note"
    reason = "; ".join(detail.get("reasons") or []) or "-"
    key = detail.get("key") or event.ticket_id
    print(
        f"{event.instance} {key} {detail.get('priority', '')}: {tier} | {tags or 'no tag change'} | {note} | {reason}"
    )


def cmd_backfill(args: argparse.Namespace) -> int:
    """Scan every open ticket of one instance into the book again, then run that instance's cycle."""
    config = _load(args)
    logs.configure(config.daemon.log_format, Settings().log_level)
    section = next((s for s in config.instances if s.name == args.instance), None)
    if section is None:
        print(f"unknown instance {args.instance!r}", file=sys.stderr)
        return 2
    with _exclusive(config.state_url):
        return _backfill(args, config, section)


def _backfill(args: argparse.Namespace, config: AppConfig, section: InstanceSection) -> int:
    store = open_store(config.state_url)
    started = time.monotonic()

    def progress(event: Event) -> None:
        if event.kind == "scan_progress":
            detail = event.detail
            state = "done" if detail["done"] else "reading"
            eta = detail.get("eta_seconds")
            left = f", about {eta} s left" if eta is not None else ""
            print(
                f"{event.instance}: {state}: {detail['pages']} pages, {detail['tickets']} tickets, "
                f"{detail['per_second']:g} tickets/s, {time.monotonic() - started:.0f} s{left}",
                flush=True,
            )
        elif args.dry_run:
            print_plan(event)

    stop = threading.Event()
    instance = wire(
        config, section, store, environ=environment(), clock=utcnow, dry_run=args.dry_run, stop=stop, on_event=progress
    )
    keeper = None
    if not config.state_url.lower().startswith("sqlite:") and not args.dry_run:
        url = config.state_url
        keeper = LeaseKeeper(lambda: open_store(url), [section.name], config.daemon.lease_ttl_seconds)
        _fence([instance], keeper)
    try:
        if keeper is not None:
            keeper.start()
            if section.name not in keeper.holds():
                # A running daemon holds it: resetting the scan's progress is all it needs to read everything again.
                store.set_cursor(section.name + SCAN_SUFFIX, "")
                print(f"{section.name} is run by another daemon: it reads every open ticket again in its next cycle")
                return 0
        with keeper.running(instance.syncer.store) if keeper is not None else contextlib.nullcontext(True):
            if not args.dry_run:
                instance.syncer.store.set_cursor(section.name + SCAN_SUFFIX, "")  # first: a crash resumes it
            instance.syncer.rescan = True
            report = instance.syncer.run_cycle()
    finally:
        if keeper is not None:
            keeper.stop()
        instance.close()
        store.close()
    log.info("cycle", extra={"event": "cycle", **report.as_dict()})
    return 1 if report.error else 0


def cmd_once(args: argparse.Namespace) -> int:
    config = _load(args)
    logs.configure(config.daemon.log_format, Settings().log_level)
    return _run_cycles(config, args, threading.Event(), forever=False)


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    logs.configure(config.daemon.log_format, Settings().log_level)
    from runtime.metrics import Metrics  # at start-up of `run`: a missing prometheus_client fails here, at once

    metrics = Metrics()
    if config.daemon.metrics_port:
        where = f"{config.daemon.metrics_address}:{config.daemon.metrics_port}"
        try:
            metrics.serve(config.daemon.metrics_port, config.daemon.metrics_address)
        except OSError as error:
            raise ConfigFileError(config.path, f"cannot serve metrics on {where}: {error.strerror or error}") from None
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        log.info("stopping after the current ticket", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    reload = threading.Event()
    signal.signal(signal.SIGHUP, lambda signum, frame: reload.set())
    return _run_cycles(config, args, stop, forever=True, metrics=metrics, reload=reload)


def cmd_status(args: argparse.Namespace) -> int:
    """What the store holds for an operator: cursors, writes waiting for a retry, dead letters, quarantine."""
    config = _load(args)
    store = open_store(config.state_url)
    try:
        now = utcnow()
        leases = {lease.instance: lease for lease in store.leases()}
        report = {
            section.name: {
                "platform": section.platform,
                "lease": _lease_row(leases.get(section.name), now),
                "cursor": store.get_cursor(section.name),
                "open_ticket_scan": _scan_state(store.get_cursor(section.name + SCAN_SUFFIX)),
                "book": dict(zip(("open", "due"), store.book_stats(section.name, now), strict=True)),
                "pending": [_intent_row(intent) for intent in store.pending(section.name)],
                "dead_letters": [_intent_row(intent) for intent in store.dead_letters(section.name)],
                "dead_notifications": [_intent_row(i) for i in store.dead_letters(f"{NOTIFY_LEDGER}{section.name}")],
                "quarantined": [
                    {
                        "ticket": record.record_id,
                        "error": record.error,
                        "seen": record.count,
                        "last_seen": record.last_seen,
                    }
                    for record in store.quarantined(section.name)
                ],
            }
            for section in config.instances
        }
    finally:
        store.close()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for name, data in report.items():
        print(f"{name} ({data['platform']}): cursor {'set' if data['cursor'] else 'not set (first poll pending)'}")
        book = data["book"]
        print(f"  book: {book['open']} open tickets, {book['due']} due for review; scan {data['open_ticket_scan']}")
        if data["lease"] is not None:
            print(f"  lease: {_lease_text(data['lease'])}")
        for title in ("pending", "dead_letters", "quarantined", "dead_notifications"):
            rows = data[title]
            print(f"  {title.replace('_', ' ')}: {len(rows)}")
            for row in rows:
                print(f"    ticket {row['ticket']}: {row['error']}")
    return 0


def _lease_row(lease: Lease | None, now: datetime) -> dict[str, Any] | None:
    """Who runs the instance and since when; None where no daemon ever took a lease (SQLite, or not yet)."""
    if lease is None:
        return None
    return {
        "holder": lease.holder or None,
        "since": lease.acquired_at.isoformat(),
        "epoch": lease.epoch,
        "expires_at": lease.expires_at.isoformat(),
        "live": bool(lease.holder) and lease.expires_at > now,
    }


def _lease_text(row: dict[str, Any]) -> str:
    if row["holder"] is None:
        return f"free (released; epoch {row['epoch']})"
    state = "held" if row["live"] else "expired, to be taken over"
    return f"{state} by {row['holder']} since {row['since']} (epoch {row['epoch']}, until {row['expires_at']})"


def _scan_state(progress: str | None) -> str:
    if progress == SCAN_DONE:
        return "done"
    return "not started" if progress is None or progress == "" else "in progress"


def _intent_row(intent: Intent) -> dict[str, Any]:
    return {"ticket": intent.ticket_id, "key": intent.key, "attempts": intent.attempts, "error": intent.last_error}


def cmd_explain(args: argparse.Namespace) -> int:
    """Every ticket in a saved payload (any envelope, page or recorded exchange), or one live ticket, explained
    with the inputs a cycle would use: its history comes from the state store when the config names one."""
    now = utcnow()
    if args.at:
        try:
            now = _aware(args.at, "--at")
        except ValueError as error:
            print(f"explain: {error}", file=sys.stderr)
            return 2
    config = _load(args) if args.instance or (args.config and not args.file) else None
    if args.file:
        section = _section_named(config, args) if config else None
        if section is None and args.instance:
            return 2
        policy = config.policy if config else load_policy(Path(args.config) if args.config else EXAMPLE_CONFIG)
        platform = section.platform if section else args.platform
        if args.mapping or section is None:
            mapping = load_mapping(platform, Path(args.mapping) if args.mapping else None)
        else:
            mapping = load_instance_mapping(config, section)  # type: ignore[arg-type]
        try:
            data = json.loads(Path(args.file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            print(f"explain: cannot read {args.file}: {_one_line(error)}", file=sys.stderr)
            return 2
        items = list(records_in(data, platform))
        if section is not None:
            items = [on_instance(item, platform, section.url, section.options) for item in items]
        instance_name = section.name if section else "file"
    else:
        assert config is not None
        section = _section_named(config, args)
        if section is None:
            return 2
        mapping = load_instance_mapping(config, section)
        policy = config.policy
        http, connector = build_connector(section, mapping, environment())
        try:
            fetched = connector.fetch(args.ticket)
        finally:
            connector.close()
            http.close()
        if fetched is None:
            print(f"ticket {args.ticket} not found on {section.name}", file=sys.stderr)
            return 1
        items, instance_name = [fetched], section.name
    store = open_history_store(config.state_url) if config and section else None
    explained: list[dict[str, Any]] = []
    failed = shown = 0
    try:
        for item in items:
            if isinstance(item, Skipped):
                failed += 1
                print(f"skipped {item.where}: {item.reason}", file=sys.stderr)
                continue
            try:
                ticket = mapping.normalize(item, instance_name)
            except NormalizeError as error:
                failed += 1
                print(f"cannot normalize: {error}", file=sys.stderr)
                continue
            except Exception as error:  # the cycle quarantines any fault of one record: so does explain
                failed += 1
                print(f"cannot normalize ticket {item.id or '?'}: {type(error).__name__}: {error}", file=sys.stderr)
                continue
            decision = evaluate(ticket, policy, now, history_for(store, instance_name, ticket, now, policy, mapping))
            writeback = plan(decision, ticket, mapping.tags)
            if args.json:
                explained.append(explain_dict(ticket, decision, writeback))
            else:
                print(("\n" if shown else "") + explain(ticket, decision, writeback))
            shown += 1
    finally:
        if store is not None:
            store.close()
    if args.json and explained:
        print(json.dumps(explained[0] if len(items) == 1 else explained, indent=2, default=str))
    if not shown and not failed:
        print(f"explain: no ticket found in {args.file}", file=sys.stderr)
    return 1 if failed or not shown else 0


def _aware(text: str, option: str) -> datetime:
    """An ISO time with its UTC offset, in UTC. A time without one is refused: read as the host's local time it
    would mean another moment on every machine."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{option} {text!r} is not an ISO 8601 time (e.g. 2026-12-01T10:00:00Z)") from None
    if moment.tzinfo is None:
        raise ValueError(f"{option} {text!r} has no UTC offset: write {text}Z for UTC, or e.g. {text}+01:00")
    return moment.astimezone(UTC)


def _section_named(config: AppConfig, args: argparse.Namespace) -> InstanceSection | None:
    section = next((s for s in config.instances if s.name == args.instance), None)
    if section is None:
        print(f"unknown instance {args.instance!r}", file=sys.stderr)
    return section


def cmd_record(args: argparse.Namespace) -> int:
    """One read-only cycle of an instance, every HTTP exchange saved as a fixture (runtime/record.py)."""
    from runtime.record import RecordError, record

    config = _load(args)
    section = _section_named(config, args)
    if section is None:
        return 2
    try:
        report, count = record(
            config, section, Path(args.out), now=utcnow(), environ=environment(), limit=args.limit,
            scrub_pii=args.scrub_pii, on_event=print_plan,
        )  # fmt: skip
    except RecordError as error:
        print(f"record: {error}", file=sys.stderr)
        return 2
    print(f"recorded {count} exchanges of {section.name} into {args.out} ({report.tickets_seen} tickets)")
    if report.error:
        print(f"record: the cycle stopped: {report.error}", file=sys.stderr)
    return 1 if report.error else 0


def cmd_replay(args: argparse.Namespace) -> int:
    """The recorded cycle again, against the recording only; the plan, compared with an approved one."""
    from runtime.replay import ReplayError, differences, replay

    config = _load(args)
    try:
        now = _aware(args.now, "--now") if args.now else None
    except ValueError as error:
        print(f"replay: {error}", file=sys.stderr)
        return 2
    try:
        expected = json.loads(Path(args.expect).read_text(encoding="utf-8")) if args.expect else None
        report, plan, missed = replay(config, Path(args.directory), now=now, on_event=print_plan)
    except (ReplayError, OSError, ValueError) as error:
        print(f"replay: {_one_line(error)}", file=sys.stderr)
        return 2
    for request in dict.fromkeys(missed):
        print(f"replay: request not recorded: {request}", file=sys.stderr)
    if report.error and not missed:
        print(f"replay: the cycle stopped: {report.error}", file=sys.stderr)
    if args.write_plan:
        Path(args.write_plan).write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{len(plan['tickets'])} ticket(s) in the plan of {plan['instance']} at {plan['now']}")
    failed = bool(missed or report.error)
    if expected is not None:
        changed = differences(expected, plan)
        for line in changed:
            print(f"plan differs: {line}")
        print("plan matches the expected one" if not changed else f"{len(changed)} difference(s) from {args.expect}")
        failed = failed or bool(changed)
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from runtime.demo import LEGEND, print_summary, run_demo

    policy = load_policy(Path(args.config) if args.config else EXAMPLE_CONFIG)
    # The demo prints every quarantine, dead letter and conflict as it happens; the log adds only errors.
    logs.configure("text", "ERROR")

    def show(summary: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(summary, indent=2), flush=True)
            return
        notes = summary["handoff_notes"]
        for number, note in enumerate(notes["first"], 1):
            print(f"\nhandoff note {number} of {notes['count']}, in full:\n{note}")
        if notes["count"] > len(notes["first"]):
            print(f"\n... and {notes['count'] - len(notes['first'])} more handoff notes")
        print_summary(summary, sys.stdout)
        print(LEGEND)
        for name, url in summary.get("sandboxes", {}).items():
            print(f"sandbox {name}: {url}")

    def keep_serving(summary: dict[str, Any]) -> None:
        show(summary)
        print("serving the sandboxes until Ctrl-C (point `run` at these base_url values)", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)

    summary = run_demo(
        policy,
        hours=args.hours,
        step_minutes=args.step_minutes,
        tickets=args.tickets,
        seed=args.seed,
        loopback=args.loopback or args.serve,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        out=sys.stdout,
        quiet=args.json,
        serve=keep_serving if args.serve else None,
    )
    if not args.serve:
        show(summary)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    return run_report(args, _load(args), utcnow(), sys.stdout)


def cmd_init(args: argparse.Namespace) -> int:
    try:
        written = resources.init(Path(args.directory), force=args.force)
    except (resources.InitError, OSError) as error:
        print(f"init: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print(
        f"next: edit {written[0]}, export the credentials it names, then: escalation-sync check --config {written[0]}"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="sync.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    root.add_argument("--version", action="version", version=f"escalation-sync {__version__}")
    commands = root.add_subparsers(dest="command", required=True)

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--config", help="config file (default: $ESCALATION_SYNC_CONFIG or config.toml)")
        return sub

    check = with_config(commands.add_parser("check", help="validate config, mappings and policy"))
    check.add_argument("--live", action="store_true", help="also verify the mappings against each instance")
    check.add_argument("--instance", action="append", help="with --live: only this instance (repeatable)")
    check.add_argument("--json", action="store_true", help="with --live: the live findings as JSON")
    check.set_defaults(func=cmd_check)
    for name, func, text in (("once", cmd_once, "one cycle per instance"), ("run", cmd_run, "run as a daemon")):
        sub = with_config(commands.add_parser(name, help=text))
        sub.add_argument("--dry-run", action="store_true", help="plan and log, write nothing")
        sub.add_argument("--instance", action="append", help="only this instance (repeatable)")
        sub.set_defaults(func=func)

    backfill = with_config(commands.add_parser("backfill", help="read every open ticket of an instance again"))
    backfill.add_argument("--instance", required=True, help="instance name from the config")
    backfill.add_argument("--dry-run", action="store_true", help="plan and print, write nothing")
    backfill.set_defaults(func=cmd_backfill)

    status = with_config(commands.add_parser("status", help="pending writes, dead letters and quarantine"))
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    explain_cmd = with_config(commands.add_parser("explain", help="why a ticket is or is not escalated"))
    explain_cmd.add_argument("ticket", nargs="?", help="ticket id on --instance")
    explain_cmd.add_argument("--instance", help="instance name from the config")
    explain_cmd.add_argument("--file", help="a saved raw payload (JSON) instead of a live ticket")
    explain_cmd.add_argument("--platform", choices=("zendesk", "jsm", "servicenow"), help="platform of --file")
    explain_cmd.add_argument("--mapping", help="mapping file for --file (default: mappings/<platform>.toml)")
    explain_cmd.add_argument(
        "--at", help="evaluate at this ISO time with its offset (2026-12-01T10:00:00Z) instead of now"
    )
    explain_cmd.add_argument("--json", action="store_true")
    explain_cmd.set_defaults(func=cmd_explain)

    record_cmd = with_config(commands.add_parser("record", help="save one read-only cycle's exchanges as fixtures"))
    record_cmd.add_argument("--instance", required=True, help="instance name from the config")
    record_cmd.add_argument("--out", required=True, help="an empty directory for the fixtures")
    record_cmd.add_argument("--limit", type=int, help="at most this many tickets")
    record_cmd.add_argument("--scrub-pii", action="store_true", help="replace emails, names and free text")
    record_cmd.set_defaults(func=cmd_record)

    replay_cmd = with_config(commands.add_parser("replay", help="run a recorded cycle again and print its plan"))
    replay_cmd.add_argument("directory", help="what `record` wrote")
    replay_cmd.add_argument("--now", help="evaluate at this ISO time (default: when it was recorded)")
    plan_file = replay_cmd.add_mutually_exclusive_group()
    plan_file.add_argument("--expect", help="fail on any difference from this plan (JSON)")
    plan_file.add_argument("--write-plan", help="write the plan to this file (JSON)")
    replay_cmd.set_defaults(func=cmd_replay)

    demo = commands.add_parser("demo", help="run against the built-in sandboxes with simulated time")
    demo.add_argument("--config", help="take the policy from this file (default: config.example.toml)")
    demo.add_argument("--json", action="store_true", help="print only the summary, as JSON")
    demo.add_argument("--hours", type=float, default=10.0, help="simulated hours (default 10)")
    demo.add_argument("--step-minutes", type=float, default=15.0, help="simulated minutes per cycle (default 15)")
    demo.add_argument("--tickets", type=int, default=200, help="tickets seeded per platform (default 200)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--loopback", action="store_true", help="serve the sandboxes on 127.0.0.1 ports")
    demo.add_argument("--serve", action="store_true", help="with --loopback: keep serving after the run, until Ctrl-C")
    demo.add_argument("--state-dir", help="keep the demo's state store (demo.sqlite3) here, e.g. for `report`")
    demo.set_defaults(func=cmd_demo)

    report = with_config(commands.add_parser("report", help="the escalation dashboard from the store's history"))
    add_report_arguments(report)
    report.set_defaults(func=cmd_report)

    init = commands.add_parser("init", help="write a starting config.toml and mappings/ into a directory")
    init.add_argument("directory", help="where to write (created if missing)")
    init.add_argument("--force", action="store_true", help="overwrite files that exist")
    init.set_defaults(func=cmd_init)
    return root


def _one_line(error: BaseException) -> str:
    """A driver's message can span lines (libpq adds a hint); an error is one line on the terminal and in logs."""
    return " ".join(str(error).split())


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "explain" and not args.file and not (args.instance and args.ticket):
        print("explain needs --instance and a ticket id, or --file and --platform", file=sys.stderr)
        return 2
    if args.command == "explain" and args.file and not (args.platform or args.instance):
        print("explain --file needs --platform (or --instance)", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except (ConfigFileError, StoreUrlError) as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    except StoreError as error:
        print(f"state store error: {_one_line(error)}", file=sys.stderr)
        return 1
    except ConnectorError as error:
        print(f"platform error: {_one_line(error)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `sync.py explain ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # Ctrl-C in a one-shot command: the ledger makes stopping anywhere harmless
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        # A bug, not a situation the user can fix: one line by default, the traceback when asked for it.
        if os.environ.get("ESCALATION_SYNC_LOG_LEVEL", "").upper() == "DEBUG":
            raise
        print(
            f"internal error: {type(error).__name__}: {error} (ESCALATION_SYNC_LOG_LEVEL=DEBUG shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
