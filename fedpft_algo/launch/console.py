"""What a ``fedpft`` command shows on the console: its own lines only, unless ``-v``.

Python warnings (FedML's ``pkg_resources`` UserWarning at ``import fedml``, ``transformers``'
FutureWarnings) and library log messages (``transformers``' load report of a new task head) stay off
the console; with ``-v`` they show there, with the tool's INFO messages. Either way every message is
held, and written to ``<run dir>/logs/launcher.log`` once ``fedpft run`` has a run directory. The
participants' own output goes to their log files (the launcher redirects it), not to the console.
"""
from __future__ import annotations

import contextlib
import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Iterator, Optional

PACKAGE = "fedpft_algo"
LAUNCHER_LOG = "launcher.log"   # under <run dir>/logs
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _ToolOnly(logging.Filter):
    """The console's filter without ``-v``: the tool's own messages, not its libraries'."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == PACKAGE or record.name.startswith(PACKAGE + ".")


class _Console:
    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.show = logging.StreamHandler(sys.stderr)
        self.show.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.show.setLevel(logging.INFO if verbose else logging.WARNING)
        if not verbose:
            self.show.addFilter(_ToolOnly())
        # no target until a run directory exists: keeps every record (a command logs a few dozen)
        self.held = logging.handlers.MemoryHandler(capacity=1 << 30, flushLevel=logging.DEBUG)


_CURRENT: Optional[_Console] = None


@contextlib.contextmanager
def command_console(verbose: bool) -> Iterator[None]:
    """The console of one command (``fedpft_algo.cli.main``); everything is undone on exit."""
    global _CURRENT
    console, root = _Console(verbose), logging.getLogger()
    level, _CURRENT = root.level, console
    root.setLevel(logging.INFO)
    root.addHandler(console.show)
    root.addHandler(console.held)
    logging.captureWarnings(True)   # set before anything imports fedml
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for handler in (console.show, console.held):
            root.removeHandler(handler)
            handler.close()
        if console.held.target is not None:
            console.held.target.close()
        root.setLevel(level)
        _CURRENT = None


def keep_log(run_dir: Path) -> None:
    """What was held so far, and every message from now on, goes to ``<run dir>/logs/launcher.log``."""
    console = _CURRENT
    if console is None or console.held.target is not None:
        return
    (Path(run_dir) / "logs").mkdir(parents=True, exist_ok=True)
    target = logging.FileHandler(Path(run_dir) / "logs" / LAUNCHER_LOG, encoding="utf-8")
    target.setFormatter(logging.Formatter(_FORMAT))
    console.held.setTarget(target)
    console.held.flush()


def route_transformers() -> None:
    """``transformers`` prints through a handler of its own and draws a "Loading weights" bar: send its
    messages through the console's handlers instead, and draw no bar unless ``-v``. Call where
    ``transformers`` is about to be imported anyway (importing it takes seconds)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    if _CURRENT is not None and not _CURRENT.verbose:
        hf_logging.disable_progress_bar()
