"""Server checkpoints: atomic writes, commit record last, safetensors only, crash-safe."""
import json
import os

import pytest
import torch

from fedpft_algo import files
from fedpft_algo.rundir import checkpoint
from fedpft_algo.errors import ConfigError


def tensors(value: float):
    return {"sub.weight": torch.full((3, 2), value), "rng.server_generator": torch.Generator().get_state()}


def test_save_then_latest_round_trips_tensors_and_metadata(tmp_path):
    checkpoint.save(tmp_path, 1, tensors(1.0), {"history": [{"round": 0, "accuracy": 0.5}], "config_fingerprint": "a"})
    checkpoint.save(tmp_path, 2, tensors(2.0), {"history": [{"round": 0}, {"round": 1}], "config_fingerprint": "a"})
    saved = checkpoint.latest(tmp_path)
    assert saved.rounds_done == 2 and [r["round"] for r in saved.meta["history"]] == [0, 1]
    loaded = saved.load_tensors()
    assert torch.equal(loaded["sub.weight"], torch.full((3, 2), 2.0))
    assert torch.equal(loaded["rng.server_generator"], torch.Generator().get_state())
    assert checkpoint.read(saved.path).rounds_done == 2


def test_only_the_last_two_checkpoints_are_kept(tmp_path):
    for rounds in range(1, 5):
        checkpoint.save(tmp_path, rounds, tensors(rounds), {"history": []})
    names = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert names == ["round-0003.json", "round-0003.safetensors", "round-0004.json", "round-0004.safetensors"]


@pytest.mark.parametrize("crash_on", ["round-0002.safetensors", "round-0002.json"])
def test_a_crash_while_writing_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch, crash_on):
    checkpoint.save(tmp_path, 1, tensors(1.0), {"history": [{"round": 0}]})
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith(crash_on):
            raise KeyboardInterrupt("killed while writing")  # what a SIGINT/SIGTERM mid-write raises
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 2, tensors(2.0), {"history": [{"round": 0}, {"round": 1}]})
    monkeypatch.setattr(files.os, "replace", real_replace)
    saved = checkpoint.latest(tmp_path)
    assert saved.rounds_done == 1
    assert torch.equal(saved.load_tensors()["sub.weight"], torch.full((3, 2), 1.0))
    assert not [p for p in (tmp_path / "checkpoint").iterdir() if p.name.endswith(".tmp")]


def test_a_half_written_file_from_a_killed_process_is_ignored(tmp_path):
    checkpoint.save(tmp_path, 1, tensors(1.0), {"history": []})
    folder = tmp_path / "checkpoint"
    (folder / ".round-0002.safetensors.abc.tmp").write_bytes(b"\x00" * 10)  # SIGKILL before the rename
    (folder / "round-0002.json").write_text('{"rounds_done": 2, "format": 1, "tens')  # torn record
    assert checkpoint.latest(tmp_path).rounds_done == 1


def test_tampered_tensors_are_refused(tmp_path):
    path = checkpoint.save(tmp_path, 1, tensors(1.0), {"history": []})
    record = json.loads(path.read_text())
    tensor_file = path.with_name(record["tensors"])
    tensor_file.write_bytes(tensor_file.read_bytes()[:-4] + b"\x00\x00\x80\x7f")
    with pytest.raises(ConfigError, match="SHA-256 does not match"):
        checkpoint.latest(tmp_path).load_tensors()


def test_fingerprint_ignores_where_logs_go_and_how_many_rounds_remain():
    config = {"train_args": {"comm_round": 4, "learning_rate": 0.1}, "tracking_args": {"log_file_dir": "/a"}}
    moved = {"train_args": {"comm_round": 2, "learning_rate": 0.1}, "tracking_args": {"log_file_dir": "/b"},
             "common_args": {"resume_round": 2, "resume_checkpoint": "/x.json"}}
    changed = {"train_args": {"comm_round": 4, "learning_rate": 0.2}, "tracking_args": {"log_file_dir": "/a"}}
    assert checkpoint.config_fingerprint(config) == checkpoint.config_fingerprint(moved)
    assert checkpoint.config_fingerprint(config) != checkpoint.config_fingerprint(changed)
