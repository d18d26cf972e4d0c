"""Atomic writes and the inter-process lock (run directory, sub-FM cache, bench results)."""
import json
import threading
import time

import pytest

from fedpft_algo import files


def test_write_json_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "status.json"
    files.write_json_atomic(path, {"phase": "started"})
    files.write_json_atomic(path, {"phase": "done"})
    assert json.loads(path.read_text()) == {"phase": "done"}
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]


def test_an_interrupted_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    files.write_text_atomic(path, "old")

    def interrupted(src, dst):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.write_bytes_atomic(path, b"new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_file_lock_lets_one_holder_in_at_a_time(tmp_path):
    lock, order = tmp_path / "cache" / "entry.lock", []
    holding = threading.Event()

    def first():
        with files.file_lock(lock):
            holding.set()
            time.sleep(0.3)
            order.append("first leaves")

    def second():
        holding.wait()
        with files.file_lock(lock):   # another open file description: flock makes it wait
            order.append("second enters")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert order == ["first leaves", "second enters"]
