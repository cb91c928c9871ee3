"""Stateful stand-ins for the platform APIs we use (the subset the daemon calls), for tests, demos and benches.

Each platform's sandbox (`sandbox/<platform>.py`) is written from the vendor's documentation, shares no code
with `connectors/`, runs on a `SimClock`, and serves in-process (`.transport()`) or on loopback (`.serve()`).
Import the platform module you need; this package imports nothing heavy on its own.
"""
