"""FedPFTConfig: validation, derived settings, (de)serialisation."""
import json
import re
import types

import pytest

from fedpft_algo.config import FedPFTConfig
from fedpft_algo.errors import ConfigError, FedPFTError


def test_config_defaults_are_the_papers():
    config = FedPFTConfig()

    assert (config.ffn_keep_ratio, config.retained_layers) == (0.25, (0, -1))
    assert (config.lora_r, config.lora_alpha, config.lora_dropout) == (8, 48, 0.1)
    # "auto": the paper's APoZ on encoders, mean |activation| on decoders (runtime.aggregator resolves it)
    assert (config.align_interval, config.align_update_ratio, config.align_statistic) == (10, 0.5, "auto")
    assert config.aggregation == "weighted"
    assert (config.task_kind, config.label_answers) == ("auto", ())
    assert "{text}" in config.prompt_template and "{choices}" in config.prompt_template


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, FedPFTError) and issubclass(ConfigError, ValueError)


# (field, bad value, the text the message must contain: the key and the bad value)
BAD_VALUES = [
    ("method", "fedavg", "fedpft_method='fedavg'"),
    ("method", None, "fedpft_method=None"),
    ("align_statistic", "zeros", "fedpft_align_statistic='zeros'"),
    ("task_kind", "chat", "fedpft_task_kind='chat'"),
    ("prompt_template", "Answer: {choices}", "fedpft_prompt_template='Answer: {choices}'"),
    ("label_answers", ["yes", " "], "fedpft_label_answers=['yes', ' ']"),
    ("label_answers", [1, 2], "fedpft_label_answers=(1, 2)"),
    ("aggregation", "median", "fedpft_aggregation='median'"),
    ("ffn_keep_ratio", 0.0, "fedpft_ffn_keep_ratio=0.0"),
    ("ffn_keep_ratio", 1.5, "fedpft_ffn_keep_ratio=1.5"),
    ("ffn_keep_ratio", "0.25", "fedpft_ffn_keep_ratio='0.25'"),
    ("ffn_keep_ratio", float("nan"), "fedpft_ffn_keep_ratio=nan"),
    ("align_update_ratio", 0.0, "fedpft_align_update_ratio=0.0"),
    ("lora_dropout", 1.0, "fedpft_lora_dropout=1.0"),
    ("layer_align_warmup_ratio", -0.1, "fedpft_layer_align_warmup_ratio=-0.1"),
    ("lora_r", 0, "fedpft_lora_r=0"),
    ("lora_r", "8", "fedpft_lora_r='8'"),
    ("lora_r", True, "fedpft_lora_r=True"),
    ("lora_r", 8.0, "fedpft_lora_r=8.0"),
    ("lora_alpha", -8, "fedpft_lora_alpha=-8"),
    ("align_interval", 0, "fedpft_align_interval=0"),
    ("layer_align_batch_size", 0, "fedpft_layer_align_batch_size=0"),
    ("neuron_align_batch_size", 0, "fedpft_neuron_align_batch_size=0"),
    ("public_size", 0, "fedpft_public_size=0"),
    ("max_length", 0, "fedpft_max_length=0"),
    ("layer_align_steps", -1, "fedpft_layer_align_steps=-1"),
    ("neuron_align_steps", -5, "fedpft_neuron_align_steps=-5"),
    ("layer_align_lr", 0.0, "fedpft_layer_align_lr=0.0"),
    ("neuron_align_lr", -0.001, "fedpft_neuron_align_lr=-0.001"),
    ("align_max_grad_norm", 0.0, "fedpft_align_max_grad_norm=0.0"),
    ("layer_align_weight_decay", -0.01, "fedpft_layer_align_weight_decay=-0.01"),
    ("retained_layers", (0, 0), "fedpft_retained_layers=[0, 0]"),
    ("retained_layers", (0, 1.5), "fedpft_retained_layers=(0, 1.5)"),
    ("public_dataset", 5, "fedpft_public_dataset=5"),
    ("cache_dir", None, "fedpft_cache_dir=None"),
    ("gradient_checkpointing", "yes", "fedpft_gradient_checkpointing='yes'"),
    ("gradient_checkpointing", 1, "fedpft_gradient_checkpointing=1"),
]


@pytest.mark.parametrize("field, value, expected", BAD_VALUES, ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_config_with_bad_value_raises_naming_key_and_value(field, value, expected):
    with pytest.raises(ConfigError, match=re.escape(expected) + " is not allowed: expected "):
        FedPFTConfig(**{field: value})


def test_config_coerces_integer_to_float_fields():
    config = FedPFTConfig(ffn_keep_ratio=1, layer_align_lr=1)

    assert config.ffn_keep_ratio == 1.0 and isinstance(config.ffn_keep_ratio, float)
    assert isinstance(config.layer_align_lr, float)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        FedPFTConfig().lora_r = 4


def test_from_dict_with_misspelt_key_suggests_the_right_one():
    with pytest.raises(ConfigError,
                       match=r"unknown config key 'fedpft_ffn_keep_ratoi'; did you mean fedpft_ffn_keep_ratio\?"):
        FedPFTConfig.from_dict({"fedpft_ffn_keep_ratoi": 0.3}, prefix="fedpft_")


def test_from_dict_with_unrelated_key_lists_known_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'zzz' \(known: .*align_interval, "):
        FedPFTConfig.from_dict({"zzz": 1})


def test_from_args_reads_only_fedpft_keys():
    # Prepare: FedML's flattened args hold its own keys next to ours
    args = types.SimpleNamespace(learning_rate=0.1, comm_round=5, client_num_in_total=10, ffn_keep_ratio=0.9,
                                 fedpft_ffn_keep_ratio=0.5, fedpft_retained_layers=[0, 2], fedpft_method="fedpft_b")

    # Execute
    config = FedPFTConfig.from_args(args)

    # Assert
    assert config == FedPFTConfig(ffn_keep_ratio=0.5, retained_layers=(0, 2), method="fedpft_b")


def test_from_args_with_bad_value_raises():
    with pytest.raises(ConfigError, match=r"fedpft_lora_r=0 is not allowed"):
        FedPFTConfig.from_args(types.SimpleNamespace(fedpft_lora_r=0))


@pytest.mark.parametrize("config", [
    FedPFTConfig(),
    FedPFTConfig(method="fedpft_d", ffn_keep_ratio=0.5, retained_layers=(0, 1, -1), public_dataset="imdb",
                 aggregation="uniform", align_statistic="mean_abs", cache_dir="/tmp/x"),
])
def test_config_round_trips_through_args_dict_and_json(config):
    as_args = config.to_args_dict()

    assert FedPFTConfig.from_dict(as_args, prefix="fedpft_") == config
    assert FedPFTConfig.from_dict(json.loads(json.dumps(as_args)), prefix="fedpft_") == config
    assert all(key.startswith("fedpft_") for key in as_args)
    assert as_args["fedpft_retained_layers"] == list(config.retained_layers)


@pytest.mark.parametrize("retained, num_layers, expected", [
    ((0, -1), 12, (0, 11)),
    ((-1, 0), 4, (0, 3)),
    ((), 4, ()),
    ((2, -4, 1), 4, (0, 1, 2)),
])
def test_resolve_retained_layers(retained, num_layers, expected):
    config = FedPFTConfig(retained_layers=retained)

    assert config.resolve_retained_layers(num_layers) == expected
    assert config.compressed_layers(num_layers) == tuple(i for i in range(num_layers) if i not in expected)


@pytest.mark.parametrize("retained, message", [
    ((0, 4), r"fedpft_retained_layers=\[0, 4\] is not allowed: expected layer indices in \[-4, 3\] for this 4-layer"),
    ((-5,), r"fedpft_retained_layers=\[-5\] is not allowed: expected layer indices in \[-4, 3\]"),
    ((0, -4), r"fedpft_retained_layers=\[0, -4\] is not allowed: expected indices naming distinct layers"),
    ((0, 1, 2, 3), r"fedpft_retained_layers=\[0, 1, 2, 3\] is not allowed: expected fewer than all 4 layers"),
])
def test_resolve_retained_layers_out_of_range_raises(retained, message):
    config = FedPFTConfig(retained_layers=retained)

    with pytest.raises(ConfigError, match=message):
        config.resolve_retained_layers(4)


def test_fedpetuning_may_keep_every_layer():
    """FedPETuning has no sub-FM, so "every layer kept whole" is not a mistake there."""
    config = FedPFTConfig(method="fedpetuning", retained_layers=(0, 1, 2, 3))

    assert config.compressed_layers(4) == ()


@pytest.mark.parametrize("settings, comm_round, expected", [
    (dict(align_interval=2), 5, [1, 3]),
    (dict(align_interval=2), 4, [1]),            # never after the last round
    (dict(align_interval=5), 5, []),
    (dict(align_interval=1), 3, [0, 1]),
    (dict(align_interval=10), 25, [9, 19]),
    (dict(align_interval=1, method="fedpft_d"), 3, [0, 1]),
    (dict(align_interval=1, method="fedpft_n"), 3, []),
    (dict(align_interval=1, method="fedpft_b"), 3, []),
    (dict(align_interval=1, method="fedot"), 3, []),
    (dict(align_interval=1, neuron_align_steps=0), 3, []),
])
def test_is_alignment_round_schedule(settings, comm_round, expected):
    config = FedPFTConfig(**settings)

    assert [r for r in range(comm_round) if config.is_alignment_round(r, comm_round)] == expected


@pytest.mark.parametrize("method, uses_sub_model, layer_alignment, neuron_alignment", [
    ("fedpft", True, True, True),
    ("fedpft_n", True, False, False),
    ("fedpft_b", True, True, False),
    ("fedpft_d", True, False, True),
    ("fedpetuning", False, False, False),
    ("fedot", True, True, False),
])
def test_method_switches(method, uses_sub_model, layer_alignment, neuron_alignment):
    config = FedPFTConfig(method=method)

    assert (config.uses_sub_model, config.layer_alignment, config.neuron_alignment) == (
        uses_sub_model, layer_alignment, neuron_alignment)


def test_layer_alignment_off_with_zero_steps():
    assert not FedPFTConfig(layer_align_steps=0).layer_alignment
