"""What participants write into the run directory while a run goes on, and how the launcher reads it.

* ``status/<role>_<rank>.json``: phase (started, training, done, failed), round, host and pid, error;
* ``events/<role>_<rank>.jsonl``: every FedML hook call, in order, with its round;
* ``metrics.jsonl`` (server): one JSON object per finished round (``round`` is FedML's 0-based
  round_idx; what users see counts rounds from 1);
* ``progress.json`` (server): what it is doing now (phase, steps done of how many, loss), at most
  every :data:`PROGRESS_INTERVAL` seconds within a phase, for the launcher's progress display.

Each status write is atomic (temporary file, then rename) so a reader never sees half a file;
:class:`MetricsTail` reads ``metrics.jsonl`` while it grows.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..files import write_json_atomic
from .layout import RunDir

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL = 2.0   # seconds between two progress.json writes of one phase
ROUNDS_PHASE = "rounds"   # the server's phase once the pre-round hook is done


class RunLog:
    """One participant's status, events and (server) metrics; writes nothing without a run directory."""

    def __init__(self, run_dir: Optional[Union[RunDir, Path]], role: str, rank: int):
        self.run_dir = None if run_dir is None else RunDir(Path(run_dir))
        self.role, self.rank = role, rank
        self.round = 0
        self.phase = "started"
        self.device: Optional[str] = None   # the device this rank computes on, once chosen (status files)
        self._progress = ("", 0.0)   # phase and time of the last progress.json write
        if self.run_dir:
            self.run_dir.status_dir.mkdir(parents=True, exist_ok=True)
            self.run_dir.events_dir.mkdir(parents=True, exist_ok=True)

    @property
    def name(self) -> str:
        return f"{self.role}_{self.rank}"

    def status(self, phase: str, round_idx: Optional[int] = None, error: Optional[str] = None) -> None:
        self.phase = phase
        if round_idx is not None:
            self.round = round_idx
        if not self.run_dir:
            return
        record = {"role": self.role, "rank": self.rank, "round": self.round, "phase": phase,
                  "host": socket.gethostname(), "pid": os.getpid(), "error": error, "time": time.time(),
                  "device": self.device}
        write_json_atomic(self.run_dir.status_file(self.name), record)

    def progress(self, phase: str, step: Optional[int] = None, steps: Optional[int] = None,
                 loss: Optional[float] = None) -> None:
        """Write ``progress.json``: a new phase at once, steps of the same phase at most every
        :data:`PROGRESS_INTERVAL` s and its last step; the signature fits ``core.alignment.Progress``."""
        now = time.time()
        last_phase, last_time = self._progress
        if not self.run_dir or (phase == last_phase and now - last_time < PROGRESS_INTERVAL
                                and (step is None or step != steps)):
            return
        self._progress = (phase, now)
        write_json_atomic(self.run_dir.progress_json, {"role": self.role, "rank": self.rank, "phase": phase,
                                                         "step": step, "steps": steps, "loss": loss, "time": now})

    def event(self, hook: str, round_idx: int, **extra: Any) -> None:
        if self.run_dir:
            with open(self.run_dir.events_file(self.name), "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"hook": hook, "round": round_idx, **extra}) + "\n")

    def metrics(self, row: Dict[str, Any]) -> None:
        if self.run_dir:
            with open(self.run_dir.metrics_jsonl, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


class MetricsTail:
    """Incremental reader of a growing JSON-lines file: each :meth:`read_new` returns the complete new lines.

    A line still being written (no trailing newline yet) is kept back until it is complete; a line
    that is not a JSON object is logged and skipped, so one bad write cannot stop the monitor.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._partial = b""

    def read_new(self) -> List[Dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        records = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                logger.warning("skipping a malformed line of %s: %.200r", self.path, raw)
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                logger.warning("skipping a non-object line of %s: %.200r", self.path, raw)
        return records


def read_statuses(run_dir: RunDir) -> Dict[str, Dict[str, Any]]:
    """``{"client_2": {...}}`` from ``status/*.json``; files being rewritten are skipped this time."""
    statuses = {}
    for path in sorted(RunDir(Path(run_dir)).status_dir.glob("*.json")):
        try:
            status = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(status, dict):
            statuses[path.stem] = status
    return statuses
