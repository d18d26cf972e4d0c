"""Planning a run: a pure validate, the topology keys added by a step of their own, one KEY=VALUE override."""
import copy
from pathlib import Path

import pytest
import yaml

from fedpft_algo.bench.spec import load_spec
from fedpft_algo.config import flatten
from fedpft_algo.errors import ConfigError
from fedpft_algo.launch.plan import (apply_overrides, complete_for_topology, plan_config, set_key, validate)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "fedml_config"
SHIPPED = ("simulation_sp", "simulation_mpi", "cross_silo_mpi", "cross_silo_grpc")
TOPOLOGY_KEYS = {"simulation": {}, "cross_silo": {"client_id_list": "[]", "worker_num": 3}}


def shipped(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())


def without_topology_keys(name: str) -> dict:
    config = shipped(name)
    for keys in config.values():
        keys.pop("client_id_list", None)
        keys.pop("worker_num", None)
    config["train_args"].update(client_num_in_total=5, client_num_per_round=3)
    return config


@pytest.mark.parametrize("name", SHIPPED)
def test_validate_leaves_its_input_unchanged(name):
    config = without_topology_keys(name)
    before = copy.deepcopy(config)
    validate(config, Path("c.yaml"))
    assert config == before


@pytest.mark.parametrize("name", SHIPPED)
def test_complete_for_topology_adds_exactly_the_topology_keys(name):
    config = without_topology_keys(name)
    before = copy.deepcopy(config)
    completed = complete_for_topology(config)
    assert config == before   # a new config; the input stays as it was
    flat, old = flatten(completed), flatten(before)
    added = {k: v for k, v in flat.items() if k not in old or old[k] != v}
    assert added == TOPOLOGY_KEYS[old["training_type"]]


@pytest.mark.parametrize("key, value, message", [
    ("client_num_per_round", 0, r"train_args\.client_num_per_round=0 is not allowed: expected an integer >= 1"),
    ("federated_optimizer", "FedProx", r"train_args\.federated_optimizer='FedProx' .*expected FedAvg \(FedML's "),
    ("fedpft_lora_r", 0, r"fedpft_lora_r=0 is not allowed"),
])
def test_validate_names_the_key_and_what_is_allowed(key, value, message):
    config = shipped("simulation_sp")
    set_key(config, key, value)
    with pytest.raises(ConfigError, match=message):
        validate(config, Path("c.yaml"))


def test_plan_config_takes_other_optimizers_only_when_told():
    config = shipped("simulation_sp")
    set_key(config, "federated_optimizer", "FedProx")
    with pytest.raises(ConfigError, match="expected FedAvg"):
        plan_config(config, Path("c.yaml"))
    plan = plan_config(config, Path("c.yaml"), optimizers=("FedAvg", "FedProx"))
    assert (plan.backend, plan.num_processes, plan.comm_round) == ("sp", 1, 8)
    with pytest.raises(ConfigError, match=r"federated_optimizer='FedNova' .*expected one of FedAvg, FedProx"):
        plan_config(dict(config, train_args=dict(config["train_args"], federated_optimizer="FedNova")),
                    Path("c.yaml"), optimizers=("FedAvg", "FedProx"))


def test_set_and_the_bench_share_one_override(tmp_path):
    by_option, by_call = shipped("simulation_mpi"), shipped("simulation_mpi")
    apply_overrides(by_option, ["comm_round=3", "fedpft_lora_r=4", "model_args.extra=x"], cwd=tmp_path)
    for key, value in (("comm_round", 3), ("fedpft_lora_r", 4), ("model_args.extra", "x")):
        set_key(by_call, key, value)
    assert by_option == by_call
    with pytest.raises(ConfigError, match=r"^--set comm_rounds: no section .*did you mean comm_round\?"):
        apply_overrides(by_call, ["comm_rounds=3"], cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"^bench\.smoke\.set: comm_rounds: no section"):
        set_key(by_call, "comm_rounds", 3, where="bench.smoke.set:")


def test_set_key_makes_paths_absolute_only_when_given_a_base(tmp_path):
    config = shipped("simulation_sp")
    set_key(config, "data_cache_dir", "cache")
    assert config["data_args"]["data_cache_dir"] == "cache"
    set_key(config, "data_cache_dir", "cache", base=tmp_path)
    assert config["data_args"]["data_cache_dir"] == str(tmp_path / "cache")


def test_the_bench_sets_keys_with_the_same_override(tmp_path):
    config = shipped("simulation_sp")
    config["bench"] = {"methods": ["fedpft", "fedpft_x"], "tasks": ["rotten_tomatoes"], "partitions": ["homo"],
                       "seeds": [0], "variants": {"fedpft_x": {"method": "fedpft", "set": {"comm_rounds": 3}}}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"^bench\.variants\.fedpft_x\.set: comm_rounds: no section of the config "
                                          r"has this key; did you mean comm_round\?$"):
        load_spec(path)
