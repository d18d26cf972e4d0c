"""The architecture registry: lookups, registration, locating layers and projections."""
import pytest
from torch import nn

from fedpft_algo.core import arch
from fedpft_algo.core.arch import (
    ArchSpec,
    arch_of,
    ffn_size,
    find_layers,
    get_arch,
    known_model_types,
    layer_linear,
    num_layers,
    register_arch,
    set_layer_module,
)
from fedpft_algo.config import FedPFTConfig
from fedpft_algo.errors import ModelError
from fedpft_algo.core.lora import add_lora


@pytest.fixture
def scratch_registry(monkeypatch):
    """A private copy of the registry, so registrations in a test do not leak."""
    monkeypatch.setattr(arch, "_REGISTRY", dict(arch._REGISTRY))


def test_known_model_types_include_the_shipped_architectures():
    assert set(known_model_types()) >= {"bert", "roberta", "mpnet", "distilbert", "vit", "llama"}


def test_get_arch_with_unknown_model_type_names_register_arch():
    with pytest.raises(ModelError, match=r"model_type 'gpt2' is not supported \(known: .*bert.*\); "
                                         r"register it with fedpft_algo\.register_arch"):
        get_arch("gpt2")


def test_register_arch_duplicate_raises(scratch_registry):
    with pytest.raises(ValueError, match=r"model_type 'bert' is already registered \(pass overwrite=True"):
        register_arch("bert", get_arch("roberta"))


def test_register_arch_new_type_and_overwrite(scratch_registry):
    spec = ArchSpec(layers="blocks", attention=("attn.qkv",), ffn_in="fc1", ffn_out="fc2", ffn_norm=None,
                    head=("head",))

    register_arch("tiny_test", spec)
    register_arch("bert", spec, overwrite=True)

    assert get_arch("tiny_test") is spec and get_arch("bert") is spec
    assert "tiny_test" in known_model_types()


def test_register_arch_does_not_leak_between_tests():
    assert "tiny_test" not in known_model_types()
    assert get_arch("bert").layers == "encoder.layer"


def test_find_layers_and_sizes_for_every_architecture(tiny_model_type, make_tiny_model):
    # Prepare
    model = make_tiny_model(tiny_model_type)
    spec = arch_of(model)

    # Execute
    layers = find_layers(model)

    # Assert: 4 layers of hidden 32, FFN 64 (attribute names differ per architecture)
    assert isinstance(layers, nn.ModuleList) and len(layers) == 4
    assert num_layers(model.config) == 4 and ffn_size(model.config) == 64
    for layer in layers:
        assert layer_linear(layer, spec.ffn_in).weight.shape == (64, 32)
        assert layer_linear(layer, spec.ffn_out).weight.shape == (32, 64)
        if spec.ffn_gate:
            assert layer_linear(layer, spec.ffn_gate).weight.shape == (64, 32)
        for path in spec.attention:
            assert layer_linear(layer, path).in_features in (32, 16)  # llama's K/V have 2 of 4 heads
        if spec.ffn_norm:
            assert isinstance(layer.get_submodule(spec.ffn_norm), nn.Module)
    for path in spec.head:
        assert isinstance(model.get_submodule(path), nn.Module)


def test_find_layers_through_peft_wrapper(tiny_model_type, make_tiny_model):
    model = make_tiny_model(tiny_model_type)
    layers = find_layers(model)

    wrapped = add_lora(model, FedPFTConfig())

    assert find_layers(wrapped) is layers


def test_find_layers_without_layer_list_raises():
    module = nn.Linear(2, 2)
    module.config = type("Config", (), {"model_type": "bert"})()

    with pytest.raises(ModelError, match="no module list 'encoder.layer' in this bert model"):
        find_layers(module)


def test_arch_of_unknown_model_raises():
    module = nn.Linear(2, 2)
    module.config = type("Config", (), {"model_type": "gpt2"})()

    with pytest.raises(ModelError, match="register_arch"):
        arch_of(module)


def test_layer_linear_of_a_non_linear_raises(make_tiny_model):
    layer = find_layers(make_tiny_model("bert"))[0]

    with pytest.raises(AssertionError, match="output.LayerNorm is LayerNorm, expected nn.Linear"):
        layer_linear(layer, "output.LayerNorm")


def test_set_layer_module_replaces_nested_module(make_tiny_model):
    layer = find_layers(make_tiny_model("bert"))[1]
    replacement = nn.Linear(32, 8)

    set_layer_module(layer, "intermediate.dense", replacement)

    assert layer.get_submodule("intermediate.dense") is replacement


def test_gated_mlp_spec_names_gate_separately():
    spec = get_arch("llama")

    assert (spec.ffn_in, spec.ffn_gate, spec.ffn_out) == ("mlp.up_proj", "mlp.gate_proj", "mlp.down_proj")
