"""The server's progress before round 1, end to end but in one process: alignment reports its steps
(``core.alignment``), the server's :class:`RunLog` writes them to ``progress.json`` (throttled), and the
launcher's :class:`RunProgress` shows them: one line per phase off a terminal, bars with steps and loss
on one. (A real ``fedpft run`` showing the phases: test_fedml_integration.)
"""
import copy
import io
import json
import time

import pytest
import torch

from fedpft_algo.core import alignment
from fedpft_algo.launch.progress import RunProgress
from fedpft_algo.rundir.layout import RunDir
from fedpft_algo.rundir.records import ROUNDS_PHASE, RunLog


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# ---------------------------------------------------------------------- alignment reports its steps
def _tiny_pair(make_tiny_model, tiny_inputs):
    from fedpft_algo import FedPFTConfig, build_sub_model

    full = make_tiny_model("bert")
    sub, _ = build_sub_model(full, FedPFTConfig(ffn_keep_ratio=0.5))
    batches = [tiny_inputs(full, seed=s) for s in range(3)]
    return full, sub, batches


def test_alignment_reports_each_step_and_computes_the_same(make_tiny_model, tiny_inputs, one_torch_thread):
    full, sub, batches = _tiny_pair(make_tiny_model, tiny_inputs)
    quiet_sub = copy.deepcopy(sub)
    calls = []
    torch.manual_seed(0)
    report = alignment.align_layers_(full, sub, batches, batches[:1], [1, 2], steps=4,
                                     progress=lambda *call: calls.append(call))
    assert [call[:3] for call in calls] == [("layer-level alignment", i, 4) for i in range(5)]
    assert calls[0][3] is None and all(isinstance(c[3], float) and c[3] > 0 for c in calls[1:])
    torch.manual_seed(0)
    alignment.align_layers_(full, quiet_sub, batches, batches[:1], [1, 2], steps=4)
    assert all(torch.equal(a, b) for a, b in zip(sub.state_dict().values(), quiet_sub.state_dict().values()))
    assert report.steps == 4


def test_reporting_reaches_distillations_started_below_it(make_tiny_model, tiny_inputs, one_torch_thread):
    """The server sets the callback around the sub-FM cache's code, which calls alignment itself."""
    full, sub, batches = _tiny_pair(make_tiny_model, tiny_inputs)
    calls = []
    with alignment.reporting(lambda *call: calls.append(call)):
        alignment.align_neurons_(full, sub, {1: torch.tensor([0, 3])}, batches, batches[:1], steps=2)
    alignment.align_neurons_(full, sub, {1: torch.tensor([0, 3])}, batches, batches[:1], steps=2)  # outside: none
    assert [call[:3] for call in calls] == [("neuron-level alignment", i, 2) for i in range(3)]


# ---------------------------------------------------------------------- the server writes progress.json
def test_runlog_writes_a_new_phase_at_once_and_steps_at_most_every_interval(tmp_path):
    log = RunLog(tmp_path, "server", 0)
    read = lambda: json.loads((tmp_path / RunDir.PROGRESS_JSON).read_text())  # noqa: E731
    log.progress("layer-level alignment", 0, 10, None)
    assert read()["phase"] == "layer-level alignment" and read()["step"] == 0
    log.progress("layer-level alignment", 1, 10, 0.5)   # within 2 s of the last write: skipped
    assert read()["step"] == 0
    log.progress("layer-level alignment", 10, 10, 0.25)   # the last step is always written
    assert (read()["step"], read()["steps"], read()["loss"]) == (10, 10, 0.25)
    log.progress(ROUNDS_PHASE)
    assert read()["phase"] == ROUNDS_PHASE and read()["role"] == "server" and read()["time"] <= time.time()
    RunLog(None, "server", 0).progress("anything")   # no run directory: nothing to write, no error


# ---------------------------------------------------------------------- the launcher shows it
def _server_phases(run_dir, shown: RunProgress):
    """What the server reports before round 1, each followed by one poll of the launcher."""
    log = RunLog(run_dir, "server", 0)
    steps = [("loading the data and the FM", None, None, None), ("building the sub-FM", None, None, None),
             ("layer-level alignment", 0, 20, None), ("layer-level alignment", 20, 20, 0.1234)]
    for phase, step, total, loss in steps:
        log.progress(phase, step, total, loss)
        shown.poll()
        shown.poll()   # nothing new: shows nothing more
    log.progress(ROUNDS_PHASE)
    shown.poll()
    return log


def test_off_a_terminal_each_phase_is_one_line(tmp_path):
    out = io.StringIO()
    shown = RunProgress(tmp_path, 3, file=out)
    _server_phases(tmp_path, shown)
    shown.update()
    shown.close()
    assert out.getvalue().splitlines() == ["fedpft: server: loading the data and the FM",
                                           "fedpft: server: building the sub-FM",
                                           "fedpft: server: layer-level alignment (20 steps)",
                                           "fedpft: server: sub-FM ready; the rounds start"]


def test_on_a_terminal_a_bar_shows_steps_and_loss_then_the_rounds(tmp_path):
    out = Terminal()
    shown = RunProgress(tmp_path, 3, file=out)
    log = _server_phases(tmp_path, shown)
    log.progress("neuron-level alignment", 5, 20, 0.2)   # inside a round: beside the rounds' bar
    shown.poll()
    shown.update()
    shown.close()
    text = out.getvalue()
    assert "server: layer-level alignment" in text and "20/20" in text and "loss=0.1234" in text
    assert "server: neuron-level alignment 5/20" in text and "1/3" in text and "round" in text
    assert "fedpft: server:" not in text   # no plain lines on a terminal


def test_a_file_of_an_earlier_start_and_a_disabled_display_show_nothing(tmp_path):
    RunLog(tmp_path, "server", 0).progress("layer-level alignment", 3, 20, 0.5)
    stale = json.loads((tmp_path / RunDir.PROGRESS_JSON).read_text())
    stale["time"] -= 3600   # the run that stopped, before --resume
    (tmp_path / RunDir.PROGRESS_JSON).write_text(json.dumps(stale))
    out = io.StringIO()
    RunProgress(tmp_path, 3, file=out).poll()
    assert out.getvalue() == ""
    off = RunProgress(tmp_path, 3, enabled=False, file=out)
    _server_phases(tmp_path, off)
    off.update()
    assert out.getvalue() == ""


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", '{"phase": 3}'])
def test_a_half_written_or_foreign_file_is_skipped(tmp_path, content):
    (tmp_path / RunDir.PROGRESS_JSON).write_text(content)
    out = io.StringIO()
    RunProgress(tmp_path, 3, file=out).poll()
    assert out.getvalue() == ""
