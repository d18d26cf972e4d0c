"""Experiment tracking of a run's per-round metrics: Weights & Biases the FedML way, and TensorBoard.

* **wandb**: FedML's own keys. With ``enable_wandb: true``, ``fedml.init`` itself starts a wandb run in
  each process (``wandb.init(project=wandb_project, entity=wandb_entity, name=run_name,
  config=args)``; with ``wandb_only_server: true`` only in rank 0). FedML's own algorithms then call
  ``wandb.log`` where their metrics are made (``mlops.log`` is a different path: it posts to FedML's
  hosted platform). So does FedPFT: the server logs each round's row of ``metrics.jsonl`` with its
  ``round`` (counted from 1, as the progress lines count) and, after the last round, the accuracy
  plot. FedML itself logs to the same run (its communication profiler) and lets it end with the
  process; a run the tracker had to start itself (no ``fedml.init``) is finished after the last round.
  ``wandb_name`` (the key of FedML's example yamls, which ``fedml.init`` ignores) names the run when
  ``run_name`` does not. Without network set ``WANDB_MODE=offline``: the run is written to
  ``<run dir>/wandb/offline-run-*`` (``wandb sync`` uploads it later).
* **TensorBoard**: ``fedpft_tensorboard: true`` writes the same scalars with
  ``torch.utils.tensorboard.SummaryWriter`` under ``<run dir>/tensorboard/``.

Only the server tracks; clients hold no metrics of the run.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..rundir.layout import RunDir

logger = logging.getLogger(__name__)

PLOT_KEY = "accuracy_plot"


@dataclass(frozen=True)
class TrackingSettings:
    wandb: bool
    wandb_project: Optional[str]
    wandb_entity: Optional[str]
    wandb_name: Optional[str]
    tensorboard: bool
    run_dir: Optional[Path]
    comm_round: int

    @classmethod
    def from_args(cls, args: Any, settings, run_dir: Optional[Path]) -> "TrackingSettings":
        """FedML's ``enable_wandb`` / ``wandb_*`` keys from ``args``; the rest from the run's settings."""
        def get(name):
            value = getattr(args, name, None)
            return None if value in (None, "") else value

        return cls(wandb=bool(get("enable_wandb")), wandb_project=get("wandb_project"),
                   wandb_entity=get("wandb_entity"), wandb_name=get("run_name") or get("wandb_name"),
                   tensorboard=settings.fedpft.tensorboard, run_dir=None if run_dir is None else Path(run_dir),
                   comm_round=settings.comm_round)


class RunTracker:
    """Sends each finished round's metrics to wandb and/or TensorBoard (nothing when both are off)."""

    def __init__(self, tracking: TrackingSettings):
        self.tracking = tracking
        self._wandb_run = None
        self._owns_wandb_run = False
        self._writer = None
        self.closed = False

    @classmethod
    def from_args(cls, args: Any, settings, run_dir: Optional[Path]) -> "RunTracker":
        return cls(TrackingSettings.from_args(args, settings, run_dir))

    @property
    def enabled(self) -> bool:
        return self.tracking.wandb or self.tracking.tensorboard

    def log_round(self, history: Sequence[Dict[str, Any]]) -> None:
        """Log ``history[-1]``, the round just finished; after the last round, the plot, and close."""
        if not self.enabled or self.closed or not history:
            return
        row = history[-1]
        step = int(row["round"]) + 1
        values = scalars(row)
        if self.tracking.wandb:
            run = self._wandb()
            for key in values:  # plotted against the round, not against wandb's own step counter
                run.define_metric(key, step_metric="round")
            run.log({**values, "round": step})
        writer = self._tensorboard()
        if writer is not None:
            for key, value in values.items():
                writer.add_scalar(key, value, step)
            writer.flush()
        if step >= self.tracking.comm_round:
            self.close(history)

    def close(self, history: Sequence[Dict[str, Any]] = ()) -> None:
        """Log the accuracy plot of ``history`` (wandb), finish a wandb run started here, close the event file."""
        if self.closed:
            return
        self.closed = True
        if self.tracking.wandb:
            import wandb

            run = self._wandb()
            with tempfile.TemporaryDirectory() as scratch:
                from ..rundir.results import plot_accuracy

                png = Path(scratch) / "accuracy.png"
                if history and plot_accuracy(history, png):
                    run.log({PLOT_KEY: wandb.Image(str(png)), "round": int(history[-1]["round"]) + 1})
            if self._owns_wandb_run:  # a run fedml.init started is FedML's: it logs to it until the process ends
                run.finish()
        if self._writer is not None:
            self._writer.close()

    # ------------------------------------------------------------------ backends, started on first use
    def _wandb(self):
        if self._wandb_run is None:
            import wandb

            run = wandb.run  # started by fedml.init (enable_wandb: true)
            if run is None:
                self._owns_wandb_run = True
                run = wandb.init(project=self.tracking.wandb_project or "fedpft", entity=self.tracking.wandb_entity,
                                 name=self.tracking.wandb_name,
                                 dir=str(self.tracking.run_dir) if self.tracking.run_dir else None)
            elif self.tracking.wandb_name and run.name != self.tracking.wandb_name:
                run.name = self.tracking.wandb_name
            self._wandb_run = run
        return self._wandb_run

    def _tensorboard(self):
        if self._writer is None and self.tracking.tensorboard:
            if self.tracking.run_dir is None:
                logger.warning("fedpft_tensorboard: no run directory (FEDPFT_RUN_DIR): no event files written")
                self.tracking = dataclasses.replace(self.tracking, tensorboard=False)
                return None
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.tracking.run_dir / RunDir.TENSORBOARD))
        return self._writer


def scalars(row: Dict[str, Any]) -> Dict[str, float]:
    """The numeric values of a metrics row (booleans as 0/1; ``round``, None and NaN left out)."""
    out = {}
    for key, value in row.items():
        if key == "round" or value is None or not isinstance(value, (int, float)):
            continue
        value = float(value)
        if not math.isnan(value):
            out[key] = value
    return out

