"""FedML's own baselines through FedML's sp simulator: the (x, y) adapter and one real FedAvg round."""
import json
import logging
import types

import pytest
import torch

from fedpft_algo.runtime.baselines import (BASELINES, FEDML_SP_DEFAULTS, FedMLClassifier, FedMLTestCapture, TupleLoader,
                                   apply_fedml_defaults, fedml_dataset, model_bytes)
from fedpft_algo.errors import ConfigError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_classifier_masks_padding_and_returns_the_fm_logits(make_tiny_model):
    model = make_tiny_model("bert")
    x = torch.tensor([[7, 8, 9, 0, 0], [5, 6, 7, 8, 9]])

    logits = FedMLClassifier(model, pad_token_id=0)(x)

    expected = model(input_ids=x, attention_mask=(x != 0).long()).logits
    assert torch.equal(logits, expected)
    assert model_bytes(FedMLClassifier(model, 0)) == sum(t.numel() * 4 for t in model.state_dict().values())


def test_dataset_gives_tuple_batches_and_the_test_set_to_client_0_only():
    loader = torch.utils.data.DataLoader([{"input_ids": torch.tensor([1, 2]), "labels": torch.tensor(1)}] * 4,
                                         batch_size=2)
    data = [4, 4, loader, loader, {0: 2, 1: 2}, {0: loader, 1: loader}, {0: loader, 1: loader}, 2]

    wrapped = fedml_dataset(data)

    x, y = next(iter(wrapped[5][1]))
    assert x.shape == (2, 2) and torch.equal(y, torch.tensor([1, 1]))
    assert isinstance(wrapped[6][0], TupleLoader) and wrapped[6][1] is None
    assert len(wrapped[2]) == 2


def test_capture_reads_fedml_test_dicts_in_round_order():
    seen = []
    capture = FedMLTestCapture(lambda r, result: seen.append((r, result["test_acc"], result["training_acc"])))
    log = logging.getLogger("fedml-like")
    log.addHandler(capture)
    log.setLevel(logging.INFO)
    try:
        for acc in (0.5, 0.75):
            log.info({"training_acc": acc - 0.1, "training_loss": 1.0})
            log.info("a plain message")
            log.info({"test_acc": acc, "test_loss": 0.3})
    finally:
        log.removeHandler(capture)

    assert seen == [(0, 0.5, pytest.approx(0.4)), (1, 0.75, 0.65)]


def test_fedml_defaults_fill_missing_keys_and_reject_unknown_baselines():
    args = types.SimpleNamespace(federated_optimizer="FedAvg", fedprox_mu=0.1)

    apply_fedml_defaults(args, "fedprox")

    assert args.federated_optimizer == "FedProx" and args.fedprox_mu == 0.1
    assert all(hasattr(args, key) for key in FEDML_SP_DEFAULTS)
    with pytest.raises(ConfigError, match="baseline 'scaffold'"):
        apply_fedml_defaults(args, "scaffold")
    assert set(BASELINES) >= {"fedavg", "fedprox"}


@pytest.mark.process
def test_fedml_sp_fedavg_round_trains_the_full_model_and_reports_accuracy(minilm_2layer, tmp_path,
                                                                          monkeypatch):
    # Prepare: FedML's own single-process FedAvg, 2 clients, 1 round, tiny data
    from fedpft_algo import launch as launcher

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = {
        "common_args": {"training_type": "simulation", "random_seed": 0, "using_mlops": False},
        "data_args": {"dataset": "rotten_tomatoes", "data_cache_dir": str(tmp_path / "cache"),
                      "partition_method": "homo", "partition_alpha": 1.0, "max_train_examples": 48,
                      "max_test_examples": 24},
        "model_args": {"model": str(minilm_2layer)},
        "train_args": {"federated_optimizer": "FedAvg", "client_num_in_total": 2, "client_num_per_round": 2,
                       "comm_round": 1, "epochs": 1, "batch_size": 8, "client_optimizer": "adam",
                       "learning_rate": 5e-5, "weight_decay": 0.0},
        "validation_args": {"frequency_of_the_test": 1}, "device_args": {"using_gpu": False},
        "comm_args": {"backend": "sp"},
        "tracking_args": {"enable_tracking": False, "enable_wandb": False, "log_file_dir": "./logs"},
        "fedpft_args": {"fedpft_max_length": 32},
    }
    plan = launcher.plan_config(config, tmp_path / "bench.yaml", optimizers=tuple(BASELINES.values()))
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    # Execute
    rounds = launcher.launch(plan, run_dir, timeout=240, round_timeout=240, participant_module="fedpft_algo.runtime.baselines",
                             progress=False)

    # Assert: one row from FedML's own test, full-model bytes, macro-F1 of the final model
    assert len(rounds) == 1
    row = rounds[0]
    assert row["round"] == 0 and 0.0 <= row["accuracy"] <= 1.0
    assert row["accuracy_evaluate"] == pytest.approx(row["accuracy"])
    assert 0.0 <= row["macro_f1"] <= 1.0
    assert row["upload_bytes"] > 40_000_000  # embeddings + 2 layers + head, fp32: the whole model
    assert row["federated_optimizer"] == "FedAvg"
    status = json.loads((run_dir / "status" / "server_0.json").read_text())
    assert status["phase"] == "done"
