"""The method registry: the built-ins, what registering checks, and a method registered here run through FedML."""
import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch
import yaml

import fedpft_algo
from fedpft_algo import methods
from fedpft_algo.config import METHODS, FedPFTConfig
from fedpft_algo.errors import ConfigError
from fedpft_algo.methods import FEDML_BASELINES, Method, get_method, known_methods, register_method
from fedpft_algo.methods.fedpft import FedPETuning, FedPFT
from fedpft_algo.rundir.layout import RunDir
from fedpft_algo.rundir.records import RunLog


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is now; what a test registers is gone after it."""
    methods._registry()  # the built-ins first, so that the copy holds them
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))


@dataclass(frozen=True)
class FrozenHead(FedPETuning):
    """LoRA on the full FM with the task head frozen on clients; records every aggregate plugged into the FM."""

    plugged: list = field(default_factory=list, compare=False)

    def add_client_lora(self, model, config):
        peft_model = super().add_client_lora(model, config)
        for name, parameter in peft_model.named_parameters():
            if ".modules_to_save." in name:
                parameter.requires_grad_(False)
        return peft_model

    def plug_in_(self, full_model, state, proxy) -> None:
        super().plug_in_(full_model, state, proxy)
        self.plugged.append({name: tensor.detach().clone() for name, tensor in state.items()})


def test_builtins_are_registered_in_the_yaml_order():
    assert known_methods() == METHODS
    assert [type(get_method(name)) for name in METHODS] == [FedPFT] * 4 + [FedPETuning, methods.fedot.FedOT]
    assert {name: get_method(name).client_kind for name in ("fedpft", "fedpetuning", "fedot")} == {
        "fedpft": "sub_model", "fedpetuning": "full_lora", "fedot": "emulator"}


def test_unknown_method_is_one_line_naming_the_known_ones():
    with pytest.raises(ConfigError) as error:
        get_method("fedpft_x")
    message = str(error.value)
    assert "\n" not in message and "fedpft_method='fedpft_x'" in message and ", ".join(METHODS) in message


def test_registered_method_is_a_valid_config_and_decides_for_it(registry):
    # Prepare: FedPFT with layer-level alignment only, under a new name
    with pytest.raises(ConfigError, match="fedpft_method='fedpft_layer_only'"):
        FedPFTConfig(method="fedpft_layer_only")

    # Execute
    fedpft_algo.register_method("fedpft_layer_only", FedPFT(neuron_level=False))
    config = FedPFTConfig(method="fedpft_layer_only")

    # Assert: the config validates and asks the method; the name is listed after the built-ins
    assert (config.uses_sub_model, config.layer_alignment, config.neuron_alignment) == (True, True, False)
    assert not FedPFTConfig(method="fedpft_layer_only", layer_align_steps=0).layer_alignment
    assert known_methods() == METHODS + ("fedpft_layer_only",)
    assert "fedpft_layer_only" in str(pytest.raises(ConfigError, get_method, "nope").value)


@pytest.mark.parametrize("name, method, error, match", [
    ("fedpft", FedPFT(), ValueError, "already registered"),
    ("fedavg", FedPFT(), ValueError, "FedML's baseline"),
    ("two words", FedPFT(), ValueError, "letters, digits"),
    ("mine", object(), TypeError, "expected a fedpft_algo.methods.Method"),
])
def test_register_method_rejects(registry, name, method, error, match):
    with pytest.raises(error, match=match):
        register_method(name, method)


def test_overwrite_replaces_a_builtin(registry):
    replacement = FedPFT(layer_level=False)

    register_method("fedpft", replacement, overwrite=True)

    assert get_method("fedpft") is replacement and known_methods() == METHODS
    assert not FedPFTConfig().layer_alignment


def test_method_needs_its_two_abstract_hooks():
    @dataclass(frozen=True)
    class Half(Method):
        def client_skeleton(self, model_config, config, *, model_class):
            return model_class.from_config(model_config)

    with pytest.raises(TypeError, match="build_proxy"):
        Half()


def test_bench_kinds_come_from_the_methods():
    from fedpft_algo.bench.client_cost import KINDS, kind_of

    assert {name: kind_of(name) for name in METHODS + tuple(FEDML_BASELINES)} == {
        "fedpft": "sub_model", "fedpft_n": "sub_model", "fedpft_b": "sub_model", "fedpft_d": "sub_model",
        "fedpetuning": "full_lora", "fedot": "emulator",
        "fedavg": "full_model", "fedopt": "full_model", "fednova": "full_model", "fedprox": "full_prox"}
    assert set(kind_of(name) for name in known_methods()) <= set(KINDS)


def test_registry_is_cheap_to_import_and_the_cache_imports_no_method():
    # a fresh interpreter: the built-ins (torch models, peft) load on first use; the cache no longer imports FedOT
    code = ("import sys, fedpft_algo.methods\n"
            "heavy = ('peft', 'transformers', 'fedpft_algo.methods.fedot', 'fedpft_algo.methods.fedpft')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n"
            "import fedpft_algo.methods.cache\n"
            "print(sorted(m for m in sys.modules if m.startswith('fedpft_algo.methods.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-2:] == ["[]", "['fedpft_algo.methods.base', 'fedpft_algo.methods.cache']"]


# ---------------------------------------------------------------------- a registered method through FedML
def _sp_config(model_dir, cache_dir, log_dir) -> dict:
    return {
        "common_args": {"training_type": "simulation", "random_seed": 0, "using_mlops": False},
        "data_args": {"dataset": "rotten_tomatoes", "data_cache_dir": str(cache_dir), "partition_method": "homo",
                      "max_train_examples": 32, "max_test_examples": 16},
        "model_args": {"model": str(model_dir)},
        "train_args": {"federated_optimizer": "FedAvg", "client_num_in_total": 2, "client_num_per_round": 2,
                       "comm_round": 1, "epochs": 1, "batch_size": 8, "client_optimizer": "adamw",
                       "learning_rate": 0.01, "weight_decay": 0.0},
        "validation_args": {"frequency_of_the_test": 1},
        "device_args": {"using_gpu": False},
        "comm_args": {"backend": "sp"},
        "tracking_args": {"enable_tracking": False, "enable_wandb": False, "log_file_dir": str(log_dir)},
        "fedpft_args": {"fedpft_method": "test_frozen_head", "fedpft_public_size": 20, "fedpft_max_length": 32,
                        "fedpft_lora_r": 4, "fedpft_checkpoint_interval": 0},
    }


def test_a_method_registered_here_runs_a_round_through_fedml_in_process(registry, minilm_2layer, tmp_path,
                                                                        monkeypatch, one_torch_thread):
    # Prepare: the method registered in this process; FedML's sp config on the 2-layer MiniLM, 2 clients
    from fedpft_algo.compat import load_fedml
    from fedpft_algo.runtime import participant

    method = FrozenHead()
    register_method("test_frozen_head", method)
    path, run_dir = tmp_path / "config.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(_sp_config(minilm_2layer, tmp_path / "cache", tmp_path / "logs")))
    run_dir.mkdir()
    monkeypatch.setattr(sys, "argv", ["participant", "--cf", str(path)])
    args = load_fedml().init(check_env=False)

    # Execute: what `python -m fedpft_algo.participant` runs, in this process (FedML's single-process path)
    participant.run(args, RunDir(run_dir), RunLog(RunDir(run_dir), *participant.role_of(args)))

    # Assert: one round's metrics; the FM got the method's aggregate: LoRA trained, the head as initialised
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0] and 0 <= rows[0]["accuracy"] <= 1
    assert "grad_rel_error_before" not in rows[0]  # FedPETuning's kind: clients hold the FM, no proxy
    initial, aggregate = method.plugged  # the pre-round hook's plug-in, then round 0's
    heads = [name for name in aggregate if ".modules_to_save." in name]
    lora_b = [name for name in aggregate if "lora_B" in name]
    assert heads and all(torch.equal(aggregate[name], initial[name]) for name in heads)
    assert lora_b and all(not initial[name].any() for name in lora_b)
    assert all(aggregate[name].abs().max() > 0 for name in lora_b)
