"""``FedPFTTrainer`` and ``FedPFTAggregator`` driven in-process in FedML's call order, on a tiny BERT.

Server: get_model_params -> per round: on_before_aggregation -> aggregate -> on_after_aggregation
-> set_model_params -> test. Client: set_model_params -> on_before_local_training -> train ->
on_after_local_training -> get_model_params. Two clients, two rounds, neuron-level alignment after
round 0 (the last round never aligns). FedML's base classes accept a bare ``args`` namespace here.
"""
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch

from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.arch import num_layers
from fedpft_algo.core.compression import build_sub_model_skeleton
from fedpft_algo.core.lora import add_lora, is_trainable_name, trainable_state
from fedpft_algo.core.stats import STATS_PREFIX
from fedpft_algo.models import model_class_for
from fedpft_algo.runtime.aggregator import FedPFTAggregator
from fedpft_algo.runtime.payload import CONTROL_PREFIX, METRICS_PREFIX, nbytes, split_prefixed
from fedpft_algo.settings import RunSettings
from fedpft_algo.runtime.trainer import FedPFTTrainer
from tests.conftest import build_tiny_inputs, build_tiny_model

ROUNDS, BATCHES_PER_CLIENT, VALID_POSITIONS_PER_BATCH = 2, 2, 2 * 8 - 2  # tiny inputs: 2 x 8, 2 padded


def _batches(model, seeds, labels=True):
    batches = [build_tiny_inputs(model, seed=seed) for seed in seeds]
    for batch in batches if labels else ():
        batch["labels"] = torch.tensor([0, 1])
    return batches


def _settings(tmp_path) -> RunSettings:
    config = FedPFTConfig(retained_layers=(0, -1), lora_r=4, lora_alpha=8, lora_dropout=0.0, layer_align_steps=2,
                          align_interval=1, neuron_align_steps=2, neuron_align_lr=1e-2, checkpoint_interval=0)
    return RunSettings(fedpft=config, model="tiny-bert", dataset="tiny", max_train_examples=None,
                       max_test_examples=None, partition_method="homo", partition_alpha=0.5, client_num_in_total=2,
                       client_num_per_round=2, comm_round=ROUNDS, epochs=1, batch_size=2, learning_rate=1e-2,
                       weight_decay=0.0, seed=0, cache_dir=tmp_path / "cache")


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    """Run the rounds; return the aggregator, the clients and everything that travelled."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args, settings = SimpleNamespace(), _settings(tmp_path_factory.mktemp("fedml_order"))
        full_model = build_tiny_model("bert")
        model_config, config = full_model.config, settings.fedpft
        public, test = _batches(full_model, range(10, 14), labels=False), _batches(full_model, (20, 21))
        aggregator = FedPFTAggregator(full_model, args, settings=settings, public_batches=public,
                                      eval_batches=public[:1], test_data=test)
        clients = []
        for client_id in (1, 2):
            skeleton = build_sub_model_skeleton(model_config, config, model_class=model_class_for(model_config))
            trainer = FedPFTTrainer(add_lora(skeleton, config), args, settings,
                                    compressed_layers=config.compressed_layers(num_layers(model_config)))
            trainer.set_id(client_id)
            clients.append((trainer, _batches(full_model, range(client_id * 10, client_id * 10 + BATCHES_PER_CLIENT))))
        record = SimpleNamespace(aggregator=aggregator, clients=clients, prepared_before=aggregator.sub_model,
                                 payloads=[aggregator.get_model_params()], uploads=[], averaged=[], tests=[])
        for _ in range(ROUNDS):
            uploads = []
            for trainer, data in clients:
                trainer.set_model_params(record.payloads[-1])
                trainer.on_before_local_training(data, "cpu", args)
                trainer.train(data, "cpu", args)
                trainer.on_after_local_training(data, "cpu", args)
                uploads.append((len(data) * 2, trainer.get_model_params()))
            params_list, _ = aggregator.on_before_aggregation(uploads)
            averaged = aggregator.aggregate(params_list)
            payload = aggregator.on_after_aggregation(averaged)
            aggregator.set_model_params(payload)
            record.tests.append(aggregator.test(test, "cpu", args))
            record.uploads.append((uploads, params_list))
            record.averaged.append(averaged)
            record.payloads.append(payload)
        for trainer, _ in clients:  # what a client would train on next
            trainer.set_model_params(record.payloads[-1])
        return record
    finally:
        torch.set_num_threads(threads)


def test_first_payload_is_the_whole_sub_fm_and_no_fm_only_tensor(rounds):
    aggregator, (trainer, _) = rounds.aggregator, rounds.clients[0]
    tensors, controls = split_prefixed(rounds.payloads[0], CONTROL_PREFIX)
    client, fm = trainer.model.state_dict(), aggregator.model.state_dict()

    assert rounds.prepared_before is None  # the pre-round hook ran inside the first get_model_params
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: tuple(v.shape) for k, v in client.items()}
    compressed = [k for k in fm if k in tensors and fm[k].shape != tensors[k].shape]
    assert len(compressed) == 2 * 3  # layers 1 and 2: FFN W_in, b_in, W_out are sent at the sub-FM's width
    assert all(tensors[k].numel() < fm[k].numel() for k in compressed)
    assert nbytes(tensors) < nbytes(OrderedDict((k, v) for k, v in fm.items() if not is_trainable_name(k)))
    assert (controls["round"].item(), controls["collect_stats"].item()) == (0, 1)


def test_alignment_round_uploads_statistics_then_sends_the_changed_neurons(rounds):
    (uploads_0, params_0), (uploads_1, _) = rounds.uploads
    row_0, row_1 = rounds.aggregator.history

    for _, upload in uploads_0:
        stats = {k[len(STATS_PREFIX):]: v for k, v in upload.items() if k.startswith(STATS_PREFIX)}
        assert sorted(stats) == [f"{layer}.{kind}" for layer in (1, 2) for kind in ("abs_sum", "positions", "zeros")]
        assert stats["1.positions"].item() == BATCHES_PER_CLIENT * VALID_POSITIONS_PER_BATCH  # padding excluded
        assert {k[len(METRICS_PREFIX):] for k in upload if k.startswith(METRICS_PREFIX)} >= {"train_loss", "steps"}
    assert not any(k.startswith(STATS_PREFIX) for _, upload in uploads_1 for k in upload)
    assert all(is_trainable_name(k) for _, params in params_0 for k in params)  # side channels split off

    tensors, controls = split_prefixed(rounds.payloads[1], CONTROL_PREFIX)
    changed = [k for k in tensors if not is_trainable_name(k)]
    assert row_0["align"] and row_0["changed_tensors"] == len(changed) > 0 and not row_1["align"]
    assert all(".layer.1." in k or ".layer.2." in k for k in changed)  # only compressed layers are aligned
    sub_fm = rounds.aggregator.sub_model.state_dict()
    assert all(torch.equal(tensors[k], sub_fm[k]) for k in changed)
    assert (controls["round"].item(), controls["collect_stats"].item()) == (1, 0)
    assert all(is_trainable_name(k) for k in split_prefixed(rounds.payloads[2], CONTROL_PREFIX)[0])


def test_the_weighted_aggregate_is_plugged_into_fm_sub_fm_and_clients(rounds):
    (uploads, _), averaged = rounds.uploads[-1], rounds.averaged[-1]
    name = next(k for k in averaged if "lora_B" in k)
    (n_a, a), (n_b, b) = uploads

    assert torch.allclose(averaged[name], (n_a * a[name] + n_b * b[name]) / (n_a + n_b))
    for model in (rounds.aggregator.model, rounds.aggregator.sub_model, rounds.clients[1][0].model):
        state = trainable_state(model)
        assert list(state) == list(averaged) and all(torch.equal(state[k], averaged[k]) for k in averaged)


def test_every_round_writes_a_metrics_row_and_test_reports_it(rounds):
    history = rounds.aggregator.history

    assert [row["round"] for row in history] == list(range(ROUNDS))
    for row, (uploads, _), payload, tested in zip(history, rounds.uploads, rounds.payloads[1:], rounds.tests):
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["sub_accuracy"] <= 1.0 and row["test_total"] == 4
        assert row["upload_bytes"] == sum(nbytes(upload) for _, upload in uploads) / len(uploads)
        assert row["download_bytes"] == nbytes(payload)
        assert row["train_loss"] > 0 and row["dp_epsilon"] is None
        assert tested["accuracy"] == row["accuracy"]


def test_uploads_and_rows_carry_each_ranks_device_and_the_device_cost(rounds):
    """Each client uploads its device (as a code) and tokens per second; on a CPU no peak device memory
    (absent, not 0). The server's row names its own device and the clients', and leaves the device-memory
    cell empty."""
    for uploads, _ in rounds.uploads:
        for _, upload in uploads:
            metrics = {k[len(METRICS_PREFIX):]: v.item() for k, v in upload.items() if k.startswith(METRICS_PREFIX)}
            assert metrics["device_code"] == -1 and "peak_device_mem_mb" not in metrics
            # non-padding tokens of the round's batches / training seconds (one epoch)
            assert metrics["tokens_per_second"] * metrics["epoch_seconds"] == pytest.approx(
                BATCHES_PER_CLIENT * VALID_POSITIONS_PER_BATCH)
    for row in rounds.aggregator.history:
        assert row["device"] == "cpu" and row["client_devices"] == "cpu cpu"
        assert row["client_peak_device_mem_mb"] is None and row["client_tokens_per_second"] > 0


def test_a_bf16_client_trains_under_autocast_and_keeps_fp32_weights(rounds):
    import dataclasses

    trainer, data = rounds.clients[0]
    settings = trainer.settings
    trainer.settings = dataclasses.replace(settings, fedpft=dataclasses.replace(settings.fedpft, precision="bf16"))
    seen = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype)) for m in trainer.model.modules()
             if isinstance(m, torch.nn.Linear)]
    before = trainable_state(trainer.model)
    try:
        trainer.train(data, "cpu", SimpleNamespace())
    finally:
        trainer.settings = settings
        for hook in hooks:
            hook.remove()
    after = trainable_state(trainer.model)
    assert seen == {torch.bfloat16}
    assert {v.dtype for v in after.values()} == {torch.float32}
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert trainer.metrics["train_loss"] > 0 and trainer.metrics["tokens_per_second"] > 0
