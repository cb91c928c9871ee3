"""The installed distribution's own namespace: version, packaged resources, `python -m escalation_sync`.

The code itself keeps the repository's top-level packages (connectors, engine, mappings, runtime, sandbox, state,
sync); this package only adds what an installed copy needs beside them and cannot take from a checkout.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("escalation-sync")
except PackageNotFoundError:  # a checkout run without `pip install`: no metadata to read
    __version__ = "0+unknown"
