"""Experiment tracking: FedML's ``enable_wandb`` (offline) and ``fedpft_tensorboard``.

One real ``fedpft run`` (single process, two rounds, 2-layer MiniLM) with both switched on and
``WANDB_MODE=offline``; what it wrote is read back: the records of the offline wandb run (its
``.wandb`` file) and TensorBoard's event files, and compared with the run's ``metrics.json``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedpft_algo.config import FedPFTConfig
from fedpft_algo.errors import ConfigError
from fedpft_algo.runtime.tracking import RunTracker, TrackingSettings, scalars
from tests.runtime.test_fedml_integration import CONFIG_DIR, small_run_overrides

pytestmark = pytest.mark.timeout(480)


@pytest.fixture(scope="module")
def tracked_run(minilm_2layer, tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    run_dir = root / "run"
    overrides = small_run_overrides(minilm_2layer, root / "c") + [
        "enable_wandb=true", "tracking_args.wandb_project=fedpft-test", "tracking_args.wandb_name=tiny-run",
        "fedpft_args.fedpft_tensorboard=true"]
    command = [sys.executable, "-m", "fedpft_algo.cli", "run", "--cf", str(CONFIG_DIR / "simulation_sp.yaml"),
               "--out", str(run_dir), "--timeout", "400", "--round-timeout", "300"]
    for item in overrides:
        command += ["--set", item]
    env = dict(os.environ, WANDB_MODE="offline")
    result = subprocess.run(command, capture_output=True, text=True, timeout=450, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _wandb_records(run_dir: Path):
    """(run records, history rows) of the one offline wandb run in ``run_dir``."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    (path,) = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    store = datastore.DataStore()
    store.open_for_scan(str(path))
    runs, history = [], []
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            runs.append(record.run)
        elif kind == "history":
            history.append({item.key: json.loads(item.value_json) for item in record.history.item})
    return runs, history


@pytest.mark.process  # a real `fedpft run`
def test_wandb_offline_run_holds_every_round_and_the_accuracy_plot(tracked_run):
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    runs, history = _wandb_records(tracked_run)
    assert {r.project for r in runs} == {"fedpft-test"} and "tiny-run" in {r.display_name for r in runs}
    rows = [h for h in history if "accuracy" in h]
    assert [h["round"] for h in rows] == [1, 2]
    for logged, row in zip(rows, metrics):
        assert logged["accuracy"] == pytest.approx(row["accuracy"])
        assert logged["sub_accuracy"] == pytest.approx(row["sub_accuracy"])
        assert logged["upload_bytes"] == pytest.approx(row["upload_bytes"])
    (plot,) = [h["accuracy_plot"] for h in history if "accuracy_plot" in h]
    assert plot["_type"] == "image-file" and plot["format"] == "png"
    assert (next(tracked_run.glob("wandb/offline-run-*")) / "files" / plot["path"]).stat().st_size == plot["size"]


@pytest.mark.process  # a real `fedpft run`
def test_tensorboard_event_files_hold_the_accuracy_scalars(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = json.loads((tracked_run / "metrics.json").read_text())
    events = EventAccumulator(str(tracked_run / "tensorboard"))
    events.Reload()
    assert {"accuracy", "sub_accuracy", "macro_f1", "loss", "upload_bytes"} <= set(events.Tags()["scalars"])
    for key in ("accuracy", "sub_accuracy"):
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([row[key] for row in metrics], abs=1e-6)


def test_tensorboard_alone_writes_every_round_and_no_wandb(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = RunTracker(TrackingSettings(wandb=False, wandb_project=None, wandb_entity=None, wandb_name=None,
                                          tensorboard=True, run_dir=tmp_path, comm_round=3))
    history = []
    for round_idx, accuracy in enumerate([0.5, 0.625, 0.75]):
        history.append({"round": round_idx, "accuracy": accuracy, "align": round_idx == 1, "dp_epsilon": None,
                        "client_update_norm": float("nan")})
        tracker.log_round(history)
    assert tracker.closed
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"accuracy", "align"}  # None and NaN are left out
    assert [(e.step, e.value) for e in events.Scalars("accuracy")] == [(1, 0.5), (2, 0.625), (3, 0.75)]
    assert [e.value for e in events.Scalars("align")] == [0.0, 1.0, 0.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tensorboard"]


def test_tracking_off_is_the_default_and_does_nothing(tmp_path):
    settings = SimpleNamespace(fedpft=FedPFTConfig(), comm_round=1)
    tracker = RunTracker.from_args(SimpleNamespace(enable_wandb=False), settings, tmp_path)
    assert not tracker.enabled
    tracker.log_round([{"round": 0, "accuracy": 0.5}])
    assert list(tmp_path.iterdir()) == []
    assert scalars({"round": 4, "accuracy": 1, "note": "x", "align": True}) == {"accuracy": 1.0, "align": 1.0}


def test_fedpft_tensorboard_must_be_true_or_false():
    with pytest.raises(ConfigError, match=r"fedpft_tensorboard='yes' is not allowed: expected true or false"):
        FedPFTConfig.from_dict({"fedpft_tensorboard": "yes"}, prefix="fedpft_")
    assert FedPFTConfig.from_dict({"fedpft_tensorboard": True}, prefix="fedpft_").tensorboard is True
