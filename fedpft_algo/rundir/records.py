"""Files a participant writes into the run directory for the launcher and for tests.

* ``status/<role>_<rank>.json``: phase (started, training, done, failed), round, pid, error;
* ``events/<role>_<rank>.jsonl``: every FedML hook call, in order, with its round;
* ``metrics.jsonl`` (server): one JSON object per finished round;
* ``progress.json`` (server): what it is doing now (phase, steps done of how many, loss), at most
  every :data:`PROGRESS_INTERVAL` seconds within a phase, for the launcher's progress display.
Each status write is atomic (temporary file, then rename) so a reader never sees half a file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

PROGRESS_JSON = "progress.json"
PROGRESS_INTERVAL = 2.0   # seconds between two progress.json writes of one phase
ROUNDS_PHASE = "rounds"   # the server's phase once the pre-round hook is done


class RunLog:
    def __init__(self, run_dir: Optional[Path], role: str, rank: int):
        self.run_dir = Path(run_dir) if run_dir else None
        self.role, self.rank = role, rank
        self.round = 0
        self.phase = "started"
        self._progress = ("", 0.0)   # phase and time of the last progress.json write
        if self.run_dir:
            for sub in ("status", "events"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)

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
                  "pid": os.getpid(), "error": error, "time": time.time()}
        write_json_atomic(self.run_dir / "status" / f"{self.name}.json", record)

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
        write_json_atomic(self.run_dir / PROGRESS_JSON, {"role": self.role, "rank": self.rank, "phase": phase,
                                                         "step": step, "steps": steps, "loss": loss, "time": now})

    def event(self, hook: str, round_idx: int, **extra: Any) -> None:
        if self.run_dir:
            with open(self.run_dir / "events" / f"{self.name}.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"hook": hook, "round": round_idx, **extra}) + "\n")

    def metrics(self, row: Dict[str, Any]) -> None:
        if self.run_dir:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=1))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file (flushed to disk) and a rename: readers, and a crash at
    any point, see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Serialises processes that would compute the same cache entry (bench cells run side by side):
    the second waits, then finds the entry. The kernel releases the lock when its holder dies.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
