"""Per-layer sub-FM widths (``fedpft_layer_keep: sensitivity``) reach a client through the first payload.

The client builds its skeleton from the FM's config alone (uniform widths: it cannot measure the
sensitivities, it has neither the FM's weights nor the public data); the server's first payload names the
sub-FM's widths in a control tensor and the client's skeleton takes them on before loading the tensors.
"""
from types import SimpleNamespace

import torch

from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.arch import num_layers
from fedpft_algo.core.compression import build_sub_model_skeleton, ffn_widths, sub_model_widths
from fedpft_algo.core.lora import add_lora
from fedpft_algo.models import model_class_for
from fedpft_algo.runtime.aggregator import FedPFTAggregator
from fedpft_algo.runtime.payload import FFN_WIDTHS, CONTROL_PREFIX, split_prefixed
from fedpft_algo.runtime.trainer import FedPFTTrainer
from fedpft_algo.settings import RunSettings
from tests.conftest import build_tiny_inputs, build_tiny_model


def _settings(tmp_path, **values) -> RunSettings:
    config = FedPFTConfig(lora_r=4, lora_alpha=8, layer_align_steps=2, neuron_align_steps=0, checkpoint_interval=0,
                          **values)
    return RunSettings(fedpft=config, model="tiny-bert", dataset="tiny", max_train_examples=None,
                       max_test_examples=None, partition_method="homo", partition_alpha=0.5, client_num_in_total=1,
                       client_num_per_round=1, comm_round=1, epochs=1, batch_size=2, learning_rate=1e-2,
                       weight_decay=0.0, seed=0, cache_dir=tmp_path / "cache")


def _first_round(tmp_path, **values):
    settings = _settings(tmp_path, **values)
    full_model = build_tiny_model("bert")
    model_config, config = full_model.config, settings.fedpft
    public = [build_tiny_inputs(full_model, batch=4, seed=s) for s in range(10, 14)]
    test = [dict(build_tiny_inputs(full_model, seed=20), labels=torch.tensor([0, 1]))]
    aggregator = FedPFTAggregator(full_model, SimpleNamespace(), settings=settings, public_batches=public,
                                  eval_batches=public[:1], test_data=test)
    skeleton = build_sub_model_skeleton(model_config, config, model_class=model_class_for(model_config))
    trainer = FedPFTTrainer(add_lora(skeleton, config), SimpleNamespace(), settings,
                            compressed_layers=config.compressed_layers(num_layers(model_config)))
    payload = aggregator.get_model_params()
    uniform = ffn_widths(trainer.model.get_base_model())
    trainer.set_model_params(payload)
    trainer.train(test, "cpu", SimpleNamespace())
    return aggregator, trainer, payload, uniform, sub_model_widths(model_config, config)


def test_client_skeleton_takes_the_sensitivity_widths_of_the_first_payload(tmp_path):
    aggregator, trainer, payload, uniform, expected_uniform = _first_round(tmp_path, layer_keep="sensitivity")
    _, controls = split_prefixed(payload, CONTROL_PREFIX)
    server_widths = ffn_widths(aggregator.sub_model.get_base_model())

    assert uniform == expected_uniform == [64, 16, 16, 64] and server_widths != uniform
    assert sum(server_widths) == sum(uniform)                      # the same FFN budget
    assert controls["ffn_widths"].tolist() == server_widths and controls["ffn_widths"].dtype == torch.int64
    client, server = trainer.model.state_dict(), aggregator.sub_model.state_dict()
    assert {k: v.shape for k, v in client.items()} == {k: v.shape for k, v in server.items()}
    assert all(torch.equal(client[k], server[k]) for k in server if "lora" not in k and "classifier" not in k)


def test_uniform_widths_travel_too_and_change_nothing_on_the_client(tmp_path):
    aggregator, trainer, payload, uniform, _ = _first_round(tmp_path)
    assert payload[FFN_WIDTHS].tolist() == uniform == ffn_widths(trainer.model.get_base_model())


def test_resized_ffn_stays_frozen_on_the_client(tmp_path):
    _, trainer, _, _, _ = _first_round(tmp_path, layer_keep="sensitivity")
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
