"""A participant's device: the rank's entry of FedML's GPU mapping (``participant_device``), refused with
the CPU hint where the machine has no CUDA, and recorded in the rank's status file."""
import json
from types import SimpleNamespace

import pytest
import torch

from fedpft_algo.errors import ConfigError
from fedpft_algo.rundir.records import RunLog
from fedpft_algo.runtime.participant import participant_device


def _args(**values):
    base = dict(training_type="simulation", backend="MPI", client_num_per_round=2, using_gpu=False,
                gpu_mapping_file=None, gpu_mapping_key="mapping_default")
    return SimpleNamespace(**{**base, **values})


def test_a_cpu_run_computes_on_the_cpu_on_every_rank():
    assert [participant_device(_args(), rank) for rank in range(3)] == [torch.device("cpu")] * 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_using_gpu_without_cuda_is_an_input_error_with_the_cpu_hint():
    with pytest.raises(ConfigError, match=r"device_args.using_gpu=True but rank 1 on .* sees no CUDA device: "
                                          r"set device_args.using_gpu: false to run on CPU"):
        participant_device(_args(using_gpu=True), 1)


def test_the_status_file_records_the_ranks_device(tmp_path):
    runlog = RunLog(tmp_path, "client", 2)
    runlog.status("started")
    assert json.loads((tmp_path / "status" / "client_2.json").read_text())["device"] is None
    runlog.device = str(participant_device(_args(), 2))
    runlog.status("training", 0)
    assert json.loads((tmp_path / "status" / "client_2.json").read_text())["device"] == "cpu"
