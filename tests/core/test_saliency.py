"""The data-aware sub-FM options: activation saliency, sensitivity-set per-layer widths, the output term."""
import pytest
import torch

from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.alignment import align_layers_, layer_losses, output_loss
from fedpft_algo.core.arch import arch_of, find_layers, layer_linear
from fedpft_algo.core.compression import (WIDTHS_ATTR, build_sub_model, build_sub_model_skeleton, ffn_widths,
                                          match_ffn_widths_, neuron_saliency, select_neurons)
from fedpft_algo.core.saliency import allocate_widths, layer_sensitivity, mean_abs_activations
from fedpft_algo.errors import ConfigError
from tests.conftest import build_tiny_inputs


def _batches(model, n=3):
    return [build_tiny_inputs(model, batch=4, seq_len=8, seed=s) for s in range(n)]


@pytest.mark.parametrize("key,value", [("saliency", "wanda"), ("layer_keep", "greedy"),
                                       ("align_output_weight", -0.5), ("client_backbone_dropout", "no"),
                                       ("shared_lora_dropout", 1), ("compile", "yes")])
def test_invalid_sub_fm_and_client_options_are_rejected_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"fedpft_{key}="):
        FedPFTConfig(**{key: value})


def test_data_aware_rules_without_public_batches_raise(make_tiny_model):
    fm = make_tiny_model("bert")
    for config in (FedPFTConfig(saliency="activation"), FedPFTConfig(layer_keep="sensitivity")):
        with pytest.raises(ValueError, match="need public batches"):
            build_sub_model(fm, config)


def test_activation_saliency_keeps_the_top_neurons_by_weight_norm_times_mean_abs_activation(make_tiny_model):
    # Prepare
    fm = make_tiny_model("bert")
    batches = _batches(fm)
    spec = arch_of(fm)
    config = FedPFTConfig(ffn_keep_ratio=0.25, saliency="activation")

    # Execute
    activity = mean_abs_activations(fm, batches, [1, 2], "cpu")
    sub, keep = build_sub_model(fm, config, batches)
    _, keep_weight = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=0.25))

    # Assert: every compressed layer kept the top-k of the product, which differs from the weight rule here
    for index in (1, 2):
        layer = find_layers(fm)[index]
        weight = neuron_saliency(layer_linear(layer, spec.ffn_in).weight, layer_linear(layer, spec.ffn_out).weight)
        expected = select_neurons(weight * activity[index].float(), len(keep[index]))
        assert torch.equal(keep[index], expected)
    assert any(not torch.equal(keep[i], keep_weight[i]) for i in (1, 2))
    assert ffn_widths(sub) == [64, 16, 16, 64]


def test_mean_abs_activations_match_a_direct_computation(make_tiny_model):
    fm = make_tiny_model("bert")
    batch = build_tiny_inputs(fm, batch=2, seq_len=8)
    captured = []
    handle = layer_linear(find_layers(fm)[1], arch_of(fm).ffn_out).register_forward_pre_hook(
        lambda _m, inputs: captured.append(inputs[0].detach()))
    with torch.no_grad():
        fm(**batch)
    handle.remove()
    expected = captured[0][batch["attention_mask"].bool()].abs().mean(dim=0).double()

    assert torch.allclose(mean_abs_activations(fm, [batch], [1])[1], expected)


def test_allocate_widths_keeps_the_total_bounds_each_layer_and_follows_sensitivity():
    widths = allocate_widths({1: 0.01, 2: 0.02, 3: 0.5, 4: 0.03}, uniform=768, d_ff=3072)

    assert sum(widths.values()) == 4 * 768
    assert all(308 <= w <= 2764 for w in widths.values())       # [ceil(0.1 d_ff), floor(0.9 d_ff)]
    assert widths[3] == max(widths.values()) and widths[1] == min(widths.values())
    assert widths[1] <= widths[2] <= widths[4] <= widths[3]


@pytest.mark.parametrize("sensitivity", [{1: 1.0, 2: 1.0, 3: 1.0}, {1: 0.0, 2: 0.0, 3: 0.0}, {1: 7.0, 2: 1e-9, 3: 3.0}])
def test_allocate_widths_sum_is_exact_for_equal_zero_and_skewed_sensitivities(sensitivity):
    widths = allocate_widths(sensitivity, uniform=13, d_ff=50)
    assert sum(widths.values()) == 39 and all(5 <= w <= 45 for w in widths.values())
    if len(set(sensitivity.values())) == 1:
        assert set(widths.values()) == {13}


def test_layer_sensitivity_restores_the_model_and_is_zero_for_keeping_every_neuron(make_tiny_model):
    fm = make_tiny_model("bert")
    before = {k: v.clone() for k, v in fm.state_dict().items()}
    batches = _batches(fm, 2)
    from fedpft_algo.core.compression import _sliced_ffn

    slicer = lambda layer, keep: _sliced_ffn(layer, keep, arch_of(fm))  # noqa: E731
    cut = layer_sensitivity(fm, batches, {1: torch.arange(8), 2: torch.arange(64)}, slicer)

    assert cut[2] == pytest.approx(0.0, abs=1e-10) and cut[1] > 0
    after = fm.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_sensitivity_rule_keeps_the_uniform_total_and_skeleton_matches_the_proxy(make_tiny_model):
    # Prepare: 4 layers, 2 compressed at 25 % of 64 = 16 neurons each
    fm = make_tiny_model("bert")
    config = FedPFTConfig(ffn_keep_ratio=0.25, layer_keep="sensitivity")

    # Execute: the server's proxy; a client's skeleton from the FM's config, resized by the first payload's widths
    sub, keep = build_sub_model(fm, config, _batches(fm))
    client = build_sub_model_skeleton(fm.config, config)
    resized = match_ffn_widths_(client, getattr(sub.config, WIDTHS_ATTR))

    # Assert: same total FFN budget (hence FLOPs) as uniform, uneven here, and identical shapes on both sides
    widths = ffn_widths(sub)
    assert widths[0] == widths[3] == 64 and widths[1] + widths[2] == 32 and widths[1] != widths[2]
    assert all(7 <= widths[i] <= 57 for i in (1, 2))
    assert resized and ffn_widths(client) == widths
    assert {k: v.shape for k, v in client.state_dict().items()} == {k: v.shape for k, v in sub.state_dict().items()}
    client.load_state_dict(sub.state_dict(), strict=True)


def test_output_term_changes_the_alignment_loss_and_result(make_tiny_model):
    fm = make_tiny_model("bert")
    batches = _batches(fm, 4)
    results = []
    for weight in (0.0, 1.0):
        sub, _ = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=0.25))
        torch.manual_seed(0)
        report = align_layers_(fm, sub, batches, batches[:1], [1, 2], steps=5, lr=3e-3, output_weight=weight)
        results.append((sub.state_dict(), report))
    (plain, plain_report), (with_output, output_report) = results

    name = next(n for n in plain if ".1.intermediate.dense.weight" in n)
    assert not torch.equal(plain[name], with_output[name])
    assert plain_report.output_before == pytest.approx(output_report.output_before)
    assert output_report.output_after is not None and output_report.output_after < output_report.output_before


def test_output_loss_is_the_last_layers_normalised_mse():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 3, 4) for _ in range(3)]
    student = [t + 0.1 * torch.randn_like(t) for t in teacher]
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert torch.equal(output_loss(teacher, student, mask), layer_losses(teacher, student, mask, [2])[2])
