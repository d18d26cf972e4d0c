"""A device per rank: FedML's ``gpu_mapping.yaml`` read by :func:`fedpft_algo.settings.device_for_rank`
(the same rule as FedML's own mapping code, checked against it), and the pre-flight errors of
``device_args`` (:func:`fedpft_algo.launch.limits.check_devices`) through the real ``fedpft run``.

This machine has no CUDA: the visible GPU count is a parameter of the pure functions, and the CLI cases
show what a CPU machine answers (the one-line CUDA error, exit 2, nothing created).
"""
import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fedpft_algo import cli
from fedpft_algo.errors import ConfigError
from fedpft_algo.launch import limits, plan_run
from fedpft_algo.settings import device_for_rank, gpu_mapping, rank_device

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "fedml_config"
GPU_CONFIG = CONFIG_DIR / "simulation_mpi_gpu.yaml"
SHIPPED_MAPPING = CONFIG_DIR / "gpu_mapping.yaml"

pytestmark = pytest.mark.timeout(300)


def _mapping(tmp_path, **keys) -> Path:
    path = tmp_path / "gpu_mapping.yaml"
    path.write_text(yaml.safe_dump(keys))
    return path


# ---------------------------------------------------------------------- the pure function
@pytest.mark.parametrize("hosts, expected", [
    ({"localhost": [3]}, ["cuda:0", "cuda:0", "cuda:0"]),
    ({"localhost": [1, 2]}, ["cuda:0", "cuda:1", "cuda:1"]),
    ({"localhost": [0, 2, 1]}, ["cuda:1", "cuda:1", "cuda:2"]),             # GPU 0 left free
    ({"node-a": [1, 1], "node-b": [0, 3]}, ["cuda:0", "cuda:1", "cuda:1", "cuda:1", "cuda:1"]),  # hosts in order
])
def test_ranks_fill_hosts_in_order_and_each_hosts_gpus_in_index_order(tmp_path, hosts, expected):
    path = _mapping(tmp_path, key=hosts)
    assert [device_for_rank(rank, len(expected), path, "key") for rank in range(len(expected))] == expected
    assert [host for host, _ in gpu_mapping(path, "key")] == [h for h, counts in hosts.items() for _ in
                                                             range(sum(counts))]


@pytest.mark.parametrize("hosts", [{"localhost": [3]}, {"localhost": [1, 2]}, {"h1": [2, 0, 1], "h2": [1, 1]}])
def test_the_choice_is_fedmls_own(tmp_path, monkeypatch, hosts):
    """FedML 0.9.6's MPI-simulation and cross-silo mapping functions, run for real on the same file, give
    every rank the same GPU index (FedML's device constructor is replaced to reveal the index it is given:
    this machine has no CUDA, where FedML would fall back to the CPU)."""
    from fedpft_algo.compat import load_fedml

    load_fedml()
    from fedml.device import gpu_mapping_cross_silo, gpu_mapping_mpi

    path = _mapping(tmp_path, key=hosts)
    world = sum(itertools.chain.from_iterable(hosts.values()))
    for module in (gpu_mapping_mpi, gpu_mapping_cross_silo):
        monkeypatch.setattr(module.ml_engine_adapter, "get_device",
                            lambda args, device_id=None, device_type="cpu": f"cuda:{device_id}")
    for rank in range(world):
        ours = device_for_rank(rank, world, path, "key", hostname="any-host")
        args = SimpleNamespace(using_gpu=True)
        assert gpu_mapping_mpi.mapping_processes_to_gpu_device_from_yaml_file_mpi(
            rank, world, str(path), "key", args=args) == ours
        assert gpu_mapping_cross_silo.mapping_processes_to_gpu_device_from_yaml_file_cross_silo(
            rank, world, str(path), "key", "gpu", "horizontal", args=SimpleNamespace(using_gpu=True)) == ours


@pytest.mark.parametrize("hosts, world, message", [
    ({"localhost": [4]}, 3, r"places 4 processes; the run has 3 \(the server and 2 clients\)"),
    ({"localhost": [1, 1]}, 3, r"places 2 processes; the run has 3"),
    ({"localhost": "3"}, 3, r"key 'key' is {'localhost': '3'}: expected host: \[processes on GPU 0"),
    ({"localhost": [1, -1, 3]}, 3, r"expected host: \[processes on GPU 0, on GPU 1, \.\.\.\] \(integers >= 0\)"),
])
def test_a_mapping_that_does_not_fit_the_run_is_one_line(tmp_path, hosts, world, message):
    path = _mapping(tmp_path, key=hosts)
    with pytest.raises(ConfigError, match=message) as error:
        device_for_rank(0, world, path, "key")
    assert "\n" not in str(error.value)


def test_gpu_indices_beyond_the_visible_count_and_missing_keys_or_files(tmp_path):
    path = _mapping(tmp_path, key={"localhost": [1, 1, 1]})
    assert device_for_rank(2, 3, path, "key", visible_gpus=3) == "cuda:2"
    with pytest.raises(ConfigError, match=r"puts a process on GPU 2 of localhost; node7 has 2 visible GPU\(s\) "
                                          r"\(indices 0\.\.1\)"):
        device_for_rank(0, 3, path, "key", hostname="node7", visible_gpus=2)
    with pytest.raises(ConfigError, match=r"gpu_mapping_key='other': no such key in gpu mapping file .* "
                                          r"\(its keys: key\)"):
        device_for_rank(0, 3, path, "other")
    with pytest.raises(ConfigError, match=r"gpu_mapping_file='.*nowhere.yaml': no such file"):
        device_for_rank(0, 3, tmp_path / "nowhere.yaml", "key")


def test_rank_device_per_topology(tmp_path):
    path = _mapping(tmp_path, key={"localhost": [1, 2]})
    mpi = {"training_type": "simulation", "backend": "MPI", "client_num_per_round": 2, "using_gpu": True,
           "gpu_mapping_file": str(path), "gpu_mapping_key": "key"}
    assert [rank_device(mpi, r) for r in range(3)] == ["cuda:0", "cuda:1", "cuda:1"]
    grpc = dict(mpi, training_type="cross_silo", backend="GRPC")
    assert [rank_device(grpc, r) for r in range(3)] == ["cuda:0", "cuda:1", "cuda:1"]
    assert rank_device(dict(mpi, using_gpu=False), 2) == "cpu"            # CPU: the mapping is not read
    assert rank_device(dict(mpi, using_gpu=False, gpu_mapping_file=str(tmp_path / "none")), 1) == "cpu"
    sp = {"training_type": "simulation", "backend": "sp", "using_gpu": True}
    assert rank_device(sp, 0) == "cuda:0" and rank_device(dict(sp, gpu_id=1), 0) == "cuda:1"  # FedML's gpu_id
    with pytest.raises(ConfigError, match=r"device_args.gpu_id=1: this host has 1 visible GPU"):
        rank_device(dict(sp, gpu_id=1), 0, visible_gpus=1)
    with pytest.raises(ConfigError, match=r"device_args.gpu_mapping_key is missing: using_gpu: true with backend "
                                          r"MPI places each rank by FedML's GPU mapping"):
        rank_device(dict(mpi, gpu_mapping_key=None), 0)


def test_the_shipped_mapping_keys_fit_their_runs():
    expected = {"mapping_default": ["cuda:0"] * 3, "mapping_node_2gpu": ["cuda:0", "cuda:1", "cuda:1"],
                "mapping_node_4gpu": ["cuda:0", "cuda:0", "cuda:1", "cuda:2", "cuda:3"],
                "mapping_node_8gpu": [f"cuda:{i}" for i in range(8)]}
    for key, devices in expected.items():
        world = len(devices)
        assert [device_for_rank(r, world, SHIPPED_MAPPING, key, visible_gpus=len(set(devices)))
                for r in range(world)] == devices


# ---------------------------------------------------------------------- pre-flight
def test_check_devices_of_the_shipped_gpu_config_on_a_node_with_enough_gpus():
    plan = plan_run(GPU_CONFIG)
    assert limits.check_devices(plan, cuda_devices=1) == {0: "cuda:0", 1: "cuda:0", 2: "cuda:0"}
    plan = plan_run(GPU_CONFIG, ["gpu_mapping_key=mapping_node_2gpu"])
    assert limits.check_devices(plan, cuda_devices=2) == {0: "cuda:0", 1: "cuda:1", 2: "cuda:1"}
    with pytest.raises(ConfigError, match=r"^config file .*simulation_mpi_gpu.yaml: gpu mapping file .* key "
                                          r"'mapping_node_2gpu' puts a process on GPU 1 of localhost; this host has "
                                          r"1 visible GPU\(s\)"):
        limits.check_devices(plan, cuda_devices=1)
    cpu = plan_run(CONFIG_DIR / "simulation_mpi.yaml")
    assert limits.check_devices(cpu, cuda_devices=0) == {0: "cpu", 1: "cpu", 2: "cpu"}
    grpc = plan_run(CONFIG_DIR / "cross_silo_grpc.yaml", ["using_gpu=true", "gpu_mapping_key=mapping_node_2gpu"])
    assert limits.check_devices(grpc, cuda_devices=2) == {0: "cuda:0", 1: "cuda:1", 2: "cuda:1"}
    sp = plan_run(CONFIG_DIR / "simulation_sp.yaml", ["using_gpu=true", "gpu_id=1"])
    assert limits.check_devices(sp, cuda_devices=2) == {0: "cuda:1"}


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(capsys, *argv):
    code = cli.main(["run", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_gpu_config_on_a_machine_without_cuda_is_one_line_exit_2(isolated, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check passes here")
    code, out, err = _run(capsys, "--cf", GPU_CONFIG, "--check")
    assert code == 2 and out == ""
    assert err == (f"fedpft: error: config file {GPU_CONFIG}: device_args.using_gpu=True but this machine has no "
                   f"CUDA device (torch sees none): set device_args.using_gpu: false to run on CPU\n")
    code, out, err = _run(capsys, "--cf", GPU_CONFIG)   # the run itself: refused before anything starts
    assert code == 2 and "set device_args.using_gpu: false to run on CPU" in err
    assert list(isolated.iterdir()) == [] and not (CONFIG_DIR / "runs").exists()
    code, out, err = _run(capsys, "--cf", GPU_CONFIG, "--check", "--set", "using_gpu=false", "fedpft_precision=bf16")
    assert code == 0 and "devices   ranks 0-2 cpu; precision bf16" in out, err


@pytest.mark.parametrize("overrides, message", [
    (["gpu_mapping_key=mapping_node_4gpu"], r"key 'mapping_node_4gpu' places 5 processes; the run has 3"),
    (["client_num_per_round=3", "client_num_in_total=4"], r"key 'mapping_default' places 3 processes; the run has 4"),
    (["gpu_mapping_key=mapping_nowhere"], r"device_args.gpu_mapping_key='mapping_nowhere': no such key in gpu "
                                          r"mapping file .*gpu_mapping.yaml \(its keys: mapping_default, "),
    (["gpu_mapping_file=missing.yaml"], r"device_args.gpu_mapping_file='.*missing.yaml': no such file"),
    (["using_gpu=maybe"], r"device_args.using_gpu='maybe' is not allowed: expected true or false"),
    (["using_gpu=false", "fedpft_precision=fp16"], r"fedpft_args.fedpft_precision='fp16' is not allowed: expected "
                                                   r"fp32 or bf16 on CPU \(fp16 needs CUDA"),
    (["fedpft_precision=fp8"], r"fedpft_precision='fp8'"),
])
def test_device_mistakes_are_found_before_the_cuda_question(isolated, capsys, overrides, message):
    """A mapping that cannot fit the run is refused whatever the machine has (on a CPU machine too, before
    the CUDA error), with one line naming the key and the file; and exit 2 with nothing created."""
    code, out, err = _run(capsys, "--cf", GPU_CONFIG, "--check", "--set", *overrides)
    assert code == 2 and out == "", out
    assert err.startswith("fedpft: error: ") and err.count("\n") == 1, err
    import re

    assert re.search(message, err), err
    assert list(isolated.iterdir()) == []
