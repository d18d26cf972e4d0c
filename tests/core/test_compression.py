"""Sub-FM construction (FedPFT §3.1): saliency, neuron selection, slicing, skeletons."""
import copy
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from fedpft_algo.core.arch import arch_of, find_layers, layer_linear
from fedpft_algo.core.compression import (
    WIDTHS_ATTR,
    build_sub_model,
    build_sub_model_skeleton,
    count_parameters,
    encoder_parameters,
    ffn_widths,
    flops_per_token,
    kept_width,
    neuron_saliency,
    select_neurons,
    sub_model_widths,
)
from fedpft_algo.config import FedPFTConfig


def _logits(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits


def _state_copy(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _assert_state_equal(expected, model):
    actual = model.state_dict()
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def _layers_prefix(model):
    layers = find_layers(model)
    return next(name for name, module in model.named_modules() if module is layers) + "."


# ---------------------------------------------------------------------- saliency and selection
def test_neuron_saliency_matches_hand_computed_norms():
    # Prepare: 3 neurons, d = 2; w_in is (d_ff, d), w_out is (d, d_ff)
    w_in = torch.tensor([[1.0, 2.0], [0.0, 3.0], [4.0, 0.0]])
    w_out = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])

    # Execute
    saliency = neuron_saliency(w_in, w_out)

    # Assert: s_j = sqrt(sum_i w_in[j, i]^2 + sum_i w_out[i, j]^2)
    assert torch.allclose(saliency, torch.tensor([math.sqrt(6), math.sqrt(10), math.sqrt(20)]))


def test_neuron_saliency_with_gate_adds_gate_rows():
    w_in = torch.tensor([[1.0, 2.0], [0.0, 3.0], [4.0, 0.0]])
    w_out = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    w_gate = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])

    saliency = neuron_saliency(w_in, w_out, w_gate)

    assert torch.allclose(saliency, torch.tensor([math.sqrt(7), math.sqrt(10), math.sqrt(24)]))


def test_neuron_saliency_with_mismatched_shapes_raises():
    with pytest.raises(AssertionError, match="FFN shapes disagree"):
        neuron_saliency(torch.zeros(4, 2), torch.zeros(2, 3))


def test_select_neurons_returns_top_k_in_ascending_index_order():
    saliency = torch.tensor([0.5, 9.0, 0.1, 7.0, 3.0, 8.0])

    kept = select_neurons(saliency, 3)

    assert kept.tolist() == [1, 3, 5]


@pytest.mark.parametrize("k", [0, 7])
def test_select_neurons_with_impossible_k_raises(k):
    with pytest.raises(AssertionError, match=f"cannot keep {k} of 6 neurons"):
        select_neurons(torch.arange(6.0), k)


@pytest.mark.parametrize("ratio, retained, expected", [
    (0.25, (0, -1), [64, 16, 16, 64]),
    (0.5, (0,), [64, 32, 32, 32]),
    (0.25, (), [16, 16, 16, 16]),
    (0.1, (1, 2), [6, 64, 64, 6]),        # round(6.4) = 6
    (0.001, (0, -1), [64, 1, 1, 64]),     # never below one neuron
    (1.0, (0, -1), [64, 64, 64, 64]),
])
def test_sub_model_widths_per_layer(ratio, retained, expected, tiny_model_type, make_tiny_model):
    # Prepare
    fm = make_tiny_model(tiny_model_type)
    config = FedPFTConfig(ffn_keep_ratio=ratio, retained_layers=retained)

    # Execute
    sub, keep_index = build_sub_model(fm, config)

    # Assert: planned widths, real widths and the stored widths agree
    assert sub_model_widths(fm.config, config) == expected
    assert ffn_widths(sub) == expected
    assert getattr(sub.config, WIDTHS_ATTR) == expected
    assert sorted(keep_index) == [i for i, width in enumerate(expected) if width != 64]
    assert all(len(keep_index[i]) == expected[i] for i in keep_index)


def test_kept_width_rounds_to_nearest_neuron():
    assert kept_width(FedPFTConfig(ffn_keep_ratio=0.25), 3072) == 768
    assert kept_width(FedPFTConfig(ffn_keep_ratio=0.3), 10) == 3


# ---------------------------------------------------------------------- identity and function
def test_build_sub_model_with_ratio_one_gives_identical_logits(tiny_model_type, make_tiny_model, tiny_inputs):
    # Prepare
    fm = make_tiny_model(tiny_model_type)
    inputs = tiny_inputs(fm)

    # Execute
    sub, keep_index = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=1.0))

    # Assert
    assert keep_index == {}
    assert torch.allclose(_logits(fm, inputs), _logits(sub, inputs))


def test_build_sub_model_equals_fm_with_dropped_neurons_masked(tiny_model_type, make_tiny_model, tiny_inputs):
    # Prepare: zeroing a dropped neuron's output column removes exactly its contribution
    fm = make_tiny_model(tiny_model_type)
    inputs = tiny_inputs(fm)
    sub, keep_index = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=0.25))
    masked = copy.deepcopy(fm)
    spec = arch_of(masked)
    layers = find_layers(masked)
    for index, kept in keep_index.items():
        dropped = torch.ones(64, dtype=torch.bool)
        dropped[kept] = False
        with torch.no_grad():
            layer_linear(layers[index], spec.ffn_out).weight[:, dropped] = 0.0

    # Execute
    sub_logits, masked_logits = _logits(sub, inputs), _logits(masked, inputs)

    # Assert: same function; and the compression did change it
    assert torch.allclose(sub_logits, masked_logits, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(sub_logits, _logits(fm, inputs), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------- which neurons, which weights
def test_build_sub_model_keeps_top_saliency_neurons_of_hand_built_layer(make_tiny_model):
    # Prepare: layer 1 gets saliency 5*c_j (rows 3*c_j, columns 4*c_j) with c a known permutation of 1..64
    fm = make_tiny_model("bert")
    spec = arch_of(fm)
    layer = find_layers(fm)[1]
    c = torch.randperm(64, generator=torch.Generator().manual_seed(3)).float() + 1
    with torch.no_grad():
        w_in, w_out = layer_linear(layer, spec.ffn_in).weight, layer_linear(layer, spec.ffn_out).weight
        w_in.zero_()
        w_out.zero_()
        w_in[:, 0] = 3 * c
        w_out[0, :] = 4 * c
    expected = torch.nonzero(c > 48).flatten()  # the 16 largest of 1..64, ascending index order

    # Execute
    sub, keep_index = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=0.25))

    # Assert
    assert torch.equal(neuron_saliency(w_in, w_out), 5 * c)
    assert keep_index[1].dtype == torch.long
    assert torch.equal(keep_index[1], expected)
    sub_layer = find_layers(sub)[1]
    assert torch.equal(layer_linear(sub_layer, spec.ffn_in).weight[:, 0], 3 * c[expected])
    assert torch.equal(layer_linear(sub_layer, spec.ffn_out).weight[0, :], 4 * c[expected])


def test_build_sub_model_ranks_gated_mlp_neurons_by_gate_rows_too(make_tiny_model):
    # Prepare: LLaMA layer 2 with up and down zero, so the gate alone decides the ranking
    fm = make_tiny_model("llama")
    spec = arch_of(fm)
    layer = find_layers(fm)[2]
    c = torch.randperm(64, generator=torch.Generator().manual_seed(4)).float() + 1
    with torch.no_grad():
        layer_linear(layer, spec.ffn_in).weight.zero_()
        layer_linear(layer, spec.ffn_out).weight.zero_()
        layer_linear(layer, spec.ffn_gate).weight.zero_()
        layer_linear(layer, spec.ffn_gate).weight[:, 5] = c

    # Execute
    sub, keep_index = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=0.25))

    # Assert
    assert torch.equal(keep_index[2], torch.nonzero(c > 48).flatten())
    assert torch.equal(layer_linear(find_layers(sub)[2], spec.ffn_gate).weight[:, 5], c[c > 48])


def test_build_sub_model_slices_kept_rows_and_copies_everything_else(tiny_model_type, make_tiny_model):
    # Prepare
    fm = make_tiny_model(tiny_model_type)
    spec = arch_of(fm)
    before = _state_copy(fm)

    # Execute
    sub, keep_index = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=0.25, retained_layers=(0, -1)))

    # Assert: compressed layers 1, 2 keep the top-16 by saliency, ascending
    assert sorted(keep_index) == [1, 2]
    rows = {f"{spec.ffn_in}.weight", f"{spec.ffn_in}.bias"}          # neuron = output row / bias entry
    if spec.ffn_gate:
        rows |= {f"{spec.ffn_gate}.weight", f"{spec.ffn_gate}.bias"}
    columns = {f"{spec.ffn_out}.weight"}                               # neuron = input column
    for index, (fm_layer, sub_layer) in enumerate(zip(find_layers(fm), find_layers(sub))):
        fm_state, sub_state = fm_layer.state_dict(), sub_layer.state_dict()
        assert fm_state.keys() == sub_state.keys()
        kept = keep_index.get(index)
        if kept is not None:
            gate = layer_linear(fm_layer, spec.ffn_gate).weight if spec.ffn_gate else None
            saliency = neuron_saliency(layer_linear(fm_layer, spec.ffn_in).weight,
                                       layer_linear(fm_layer, spec.ffn_out).weight, gate)
            assert torch.equal(kept, torch.argsort(saliency, descending=True)[:16].sort().values)
        for name, tensor in fm_state.items():
            if kept is not None and name in rows:
                expected = tensor[kept]
            elif kept is not None and name in columns:
                expected = tensor[:, kept]
            else:  # retained layer, attention, norms, b_out: bit-identical
                expected = tensor
            assert torch.equal(sub_state[name], expected), f"layer {index}: {name}"
        for path in spec.attention:
            assert torch.equal(layer_linear(sub_layer, path).weight, layer_linear(fm_layer, path).weight)
    # everything outside the layers (embeddings, final norms, pooler, head) is copied
    prefix = _layers_prefix(fm)
    sub_state = sub.state_dict()
    assert sub_state.keys() == before.keys()
    for name, tensor in before.items():
        if not name.startswith(prefix):
            assert torch.equal(sub_state[name], tensor), name
    # the FM is untouched, config included
    _assert_state_equal(before, fm)
    assert getattr(fm.config, WIDTHS_ATTR, None) is None


def test_build_sub_model_shares_no_storage_with_fm(make_tiny_model):
    fm = make_tiny_model("bert")
    before = _state_copy(fm)
    sub, _ = build_sub_model(fm, FedPFTConfig())

    with torch.no_grad():
        for parameter in sub.parameters():
            parameter.add_(1.0)

    _assert_state_equal(before, fm)


def test_build_sub_model_keeps_requires_grad_flags(make_tiny_model):
    fm = make_tiny_model("bert")
    for parameter in fm.parameters():
        parameter.requires_grad_(False)

    sub, _ = build_sub_model(fm, FedPFTConfig())

    assert not any(parameter.requires_grad for parameter in sub.parameters())


def test_parameter_and_flop_counts_of_tiny_bert(make_tiny_model):
    # Prepare: per layer attention 4*(32*32+32) + 2 LayerNorms 2*64 + FFN 32*w + w + w*32 + 32
    fm = make_tiny_model("bert")

    sub, _ = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=0.25))

    assert encoder_parameters(fm) == 4 * 8544
    assert encoder_parameters(sub) == 2 * 8544 + 2 * 5424
    assert count_parameters(fm) - count_parameters(sub) == 2 * (8544 - 5424)
    # linears 4*32*32 + 2*32*w, plus 2*seq*hidden for attention scores
    assert flops_per_token(fm, seq_len=8) == 4 * (8192 + 512)
    assert flops_per_token(sub, seq_len=8) == 2 * (8192 + 512) + 2 * (5120 + 512)


# ---------------------------------------------------------------------- the packaged MiniLM
def test_build_sub_model_of_minilm_with_ratio_one_gives_identical_logits(minilm, minilm_inputs):
    fm, _ = minilm

    sub, keep_index = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=1.0))

    assert keep_index == {}
    assert torch.allclose(_logits(fm, minilm_inputs), _logits(sub, minilm_inputs))


def test_build_sub_model_of_minilm_cuts_encoder_to_paper_ratio(minilm, minilm_inputs):
    fm, _ = minilm

    sub, keep_index = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=0.25, retained_layers=(0, -1)))

    assert ffn_widths(sub) == [1536, 384, 384, 384, 384, 1536]
    assert sorted(keep_index) == [1, 2, 3, 4]
    assert encoder_parameters(fm) == 10_646_784
    assert encoder_parameters(sub) == 7_103_232
    assert _logits(sub, minilm_inputs).shape == (2, 2)


# ---------------------------------------------------------------------- skeleton from configuration
def _shapes(model):
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def test_build_sub_model_skeleton_from_sub_config_loads_sub_state_strictly(tiny_model_type, make_tiny_model,
                                                                          tiny_inputs):
    # Prepare
    fm = make_tiny_model(tiny_model_type)
    sub, _ = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=0.25))

    # Execute
    skeleton = build_sub_model_skeleton(sub.config)
    result = skeleton.load_state_dict(sub.state_dict(), strict=True)

    # Assert
    assert _shapes(skeleton) == _shapes(sub)
    assert not result.missing_keys and not result.unexpected_keys
    inputs = tiny_inputs(fm)
    assert torch.allclose(_logits(skeleton, inputs), _logits(sub, inputs))


def test_build_sub_model_skeleton_from_fm_config_and_fedpft_config(tiny_model_type, make_tiny_model):
    fm = make_tiny_model(tiny_model_type)
    config = FedPFTConfig(ffn_keep_ratio=0.25)
    sub, _ = build_sub_model(fm, config)

    skeleton = build_sub_model_skeleton(fm.config, config)

    assert _shapes(skeleton) == _shapes(sub)
    skeleton.load_state_dict(sub.state_dict(), strict=True)
    assert getattr(fm.config, WIDTHS_ATTR, None) is None  # the FM's config is not touched


def test_build_sub_model_skeleton_without_widths_or_config_raises(make_tiny_model):
    fm = make_tiny_model("bert")

    with pytest.raises(AssertionError, match="need a FedPFTConfig"):
        build_sub_model_skeleton(fm.config)


def test_build_sub_model_skeleton_widths_survive_save_pretrained(tiny_model_type, make_tiny_model, tmp_path):
    # Prepare. transformers 5 saves ViT under its pre-5 parameter names ("save_original_format"),
    # which only from_pretrained maps back; a raw state-dict round trip needs the current names.
    fm = make_tiny_model(tiny_model_type)
    sub, _ = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=0.25))
    sub.save_pretrained(tmp_path, **({"save_original_format": False} if tiny_model_type == "vit" else {}))

    # Execute: a client rebuilds the sub-FM from the saved config alone
    reloaded = AutoConfig.from_pretrained(tmp_path)
    skeleton = build_sub_model_skeleton(reloaded)
    skeleton.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)

    # Assert
    assert getattr(reloaded, WIDTHS_ATTR) == [64, 16, 16, 64]
    assert ffn_widths(skeleton) == [64, 16, 16, 64]
    _assert_state_equal(sub.state_dict(), skeleton)
