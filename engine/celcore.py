"""Import the CEL evaluator without the CEL command-line tool.

`common-expression-language`'s ``cel/__init__.py`` imports its REPL (``cel.cli``: typer, rich, prompt_toolkit)
before the compiled evaluator, and that costs a third of our start-up for code the daemon never runs. The
evaluator is the extension module ``cel.cel``; the package exposes it no other way. So, once, before anything
imports ``cel``, this registers a ``cel`` package object (the real package's spec and ``__path__``, its
``__init__`` not run) holding the extension's names: ``import cel`` anywhere then gets ``compile``, ``Context``,
``evaluate`` as usual, and ``import cel.stdlib`` or ``cel.cli`` still load on demand.

Anything unexpected (``cel`` already imported, another layout of the package) leaves the normal import alone.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader
from pathlib import Path


def install() -> bool:
    """Register the evaluator-only ``cel``; True if it was installed now."""
    if "cel" in sys.modules:
        return False
    spec = importlib.util.find_spec("cel")
    if spec is None or not spec.submodule_search_locations:
        return False
    candidates = (Path(d) / f"cel{suffix}" for d in spec.submodule_search_locations for suffix in EXTENSION_SUFFIXES)
    extension = next((path for path in candidates if path.is_file()), None)
    if extension is None:
        return False
    loader = ExtensionFileLoader("cel.cel", str(extension))
    ext_spec = importlib.util.spec_from_file_location("cel.cel", extension, loader=loader)
    if ext_spec is None:
        return False
    evaluator = importlib.util.module_from_spec(ext_spec)
    loader.exec_module(evaluator)
    package = importlib.util.module_from_spec(spec)
    names = getattr(evaluator, "__all__", [name for name in vars(evaluator) if not name.startswith("_")])
    for name in names:
        setattr(package, name, getattr(evaluator, name))
    package.cel = evaluator  # type: ignore[attr-defined]
    sys.modules["cel"] = package
    sys.modules["cel.cel"] = evaluator
    return True
