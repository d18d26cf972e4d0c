"""What ``fedpft run`` shows while a run is on: the server's phases before round 1, then the rounds.

Before the first round the server loads the data and the FM, builds the sub-FM and aligns it layer
by layer (minutes); it writes what it is doing to ``<run dir>/progress.json``
(:meth:`~fedpft_algo.rundir.records.RunLog.progress`). :class:`RunProgress` reads that file each
time the launcher polls and shows it on stderr: on a terminal a ``tqdm`` bar per phase (steps done,
loss), then the bar of rounds (with the server's phase, e.g. neuron-level alignment, beside it);
elsewhere (a pipe, a log file) one line per phase. The per-round lines stay the launcher's.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, TextIO

from ..rundir.layout import RunDir
from ..rundir.records import ROUNDS_PHASE


class RunProgress:
    """The server's phases, then a bar of ``total_rounds`` rounds; shows nothing unless ``enabled``."""

    def __init__(self, run_dir: Path, total_rounds: int, *, enabled: bool = True, file: Optional[TextIO] = None):
        self.path = RunDir(Path(run_dir)).progress_json
        self.total_rounds = total_rounds
        self.enabled = enabled
        self.file = file or sys.stderr
        self.tty = enabled and bool(getattr(self.file, "isatty", lambda: False)())
        self.since = time.time() - 1.0   # a resumed run's directory holds the last run's file: skip it
        self.phase: Optional[str] = None
        self.bar = None                  # the phase's bar (terminal only), then the rounds' bar
        self.rounds = False
        self._seen: Optional[str] = None

    # ------------------------------------------------------------------ called by the launcher
    def poll(self) -> bool:
        """Show what the server reported since the last call; True when it reported something new."""
        record = self._read()
        if record is None or not self.enabled:
            return record is not None
        phase, step, steps = record.get("phase"), record.get("step"), record.get("steps")
        if phase == ROUNDS_PHASE or self.rounds:
            self._start_rounds()
            if self.bar is not None:   # a phase inside a round (neuron-level alignment) beside the rounds' bar
                self.bar.set_postfix_str("" if phase == ROUNDS_PHASE else f"server: {phase}{_steps(step, steps)}")
            return True
        if phase != self.phase:
            self._close_bar()
            self.phase = phase
            if self.tty:
                from tqdm import tqdm

                self.bar = tqdm(total=steps, desc=f"server: {phase}", unit="step", leave=False, file=self.file)
            else:
                print(f"fedpft: server: {phase}" + (f" ({steps} steps)" if steps else ""), file=self.file,
                      flush=True)
        if self.bar is not None and isinstance(step, int):
            self.bar.update(max(0, step - self.bar.n))
            if record.get("loss") is not None:
                self.bar.set_postfix(loss=f"{record['loss']:.4f}")
        return True

    def update(self, rounds: int = 1) -> None:
        """``rounds`` more rounds finished."""
        self._start_rounds()
        if self.bar is not None:
            self.bar.set_postfix_str("", refresh=False)
            self.bar.update(rounds)
            self.bar.refresh()   # one update per round: show it now, whatever tqdm's minimum interval

    def close(self) -> None:
        self._close_bar()

    # ------------------------------------------------------------------ internals
    def _start_rounds(self) -> None:
        if self.rounds:
            return
        self._close_bar()
        self.rounds = True
        if not self.enabled:
            return
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total_rounds, unit="round", desc="fedpft", leave=False, file=self.file)
        elif self.phase is not None:   # the server reported its phases: say that they are over
            print("fedpft: server: sub-FM ready; the rounds start", file=self.file, flush=True)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _read(self) -> Optional[Dict[str, Any]]:
        """The server's latest record, when it is new (and written after this run started)."""
        try:   # compared by content: two writes within one tick of the file system's clock share an mtime
            text = self.path.read_text(encoding="utf-8")
            if text == self._seen:
                return None
            record = json.loads(text)
        except (OSError, ValueError):
            return None
        self._seen = text
        if not isinstance(record, dict) or not isinstance(record.get("phase"), str) \
                or not record.get("time", 0) >= self.since:
            return None
        return record


def _steps(step: Any, steps: Any) -> str:
    return f" {step}/{steps}" if isinstance(step, int) and isinstance(steps, int) else ""
