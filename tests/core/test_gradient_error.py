"""The gradient error between proxy (sub-FM / FedOT emulator) and FM w.r.t. LoRA + head."""
import math
from collections import OrderedDict

import pytest
import torch

from fedpft_algo.core.compression import build_sub_model
from fedpft_algo.config import FedPFTConfig
from fedpft_algo.methods.fedot import add_emulator_lora, build_emulator, full_model_names, plug_in_mapped_
from fedpft_algo.core.gradient_error import GradientProbe, compare, probe_batch, trainable_gradients
from fedpft_algo.core.lora import add_lora, is_trainable_name, plug_in_, trainable_state


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(model, n=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, model.config.vocab_size, (n, 10), generator=generator),
            "attention_mask": torch.ones(n, 10, dtype=torch.long),
            "labels": torch.randint(0, 2, (n,), generator=generator)}


def _randomise_lora_(model, seed=5):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if is_trainable_name(name):
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))


def _pair(make_tiny_model, ratio):
    fm = make_tiny_model("bert")
    config = FedPFTConfig(ffn_keep_ratio=ratio)
    sub, _ = build_sub_model(fm, config)
    fm, sub = add_lora(fm, config), add_lora(sub, config)
    _randomise_lora_(sub)
    plug_in_(fm, trainable_state(sub))
    return fm, sub


@pytest.mark.parametrize("proxy, rel, cosine", [
    ([1.0, 2.0, 2.0], 0.0, 1.0),        # identical
    ([2.0, 4.0, 4.0], 1.0, 1.0),        # twice as long: same direction, error = |g|
    ([-1.0, -2.0, -2.0], 2.0, -1.0),    # opposite
])
def test_compare_gives_relative_error_and_cosine(proxy, rel, cosine):
    full = OrderedDict(a=torch.tensor([1.0]), b=torch.tensor([2.0, 2.0]))
    proxy = OrderedDict(a=torch.tensor(proxy[:1]), b=torch.tensor(proxy[1:]))

    result = compare(proxy, full)

    assert result["rel_error"] == pytest.approx(rel)
    assert result["cosine"] == pytest.approx(cosine)


def test_compare_requires_fm_gradients_for_every_proxy_tensor():
    with pytest.raises(KeyError, match="no gradient"):
        compare({"x": torch.ones(1)}, {"y": torch.ones(1)})


def test_identical_proxy_has_zero_error(make_tiny_model):
    fm, sub = _pair(make_tiny_model, ratio=1.0)  # ratio 1.0: the sub-FM is the FM

    result = GradientProbe(_batch(fm)).measure(fm, sub, "before")

    assert result["grad_rel_error_before"] == pytest.approx(0.0, abs=1e-5)
    assert result["grad_cosine_before"] == pytest.approx(1.0, abs=1e-6)


def test_compressed_proxy_has_a_measurable_error(make_tiny_model):
    fm, sub = _pair(make_tiny_model, ratio=0.25)

    result = GradientProbe(_batch(fm)).measure(fm, sub, "after")

    assert 0.0 < result["grad_rel_error_after"] < 10.0
    assert -1.0 <= result["grad_cosine_after"] <= 1.0


def test_trainable_gradients_leave_grads_flags_and_mode_untouched(make_tiny_model):
    fm, _ = _pair(make_tiny_model, ratio=0.25)
    fm.train()
    flags = {n: p.requires_grad for n, p in fm.named_parameters()}

    grads = trainable_gradients(fm, _batch(fm))

    assert set(grads) == {n for n in flags if is_trainable_name(n)}
    assert all(p.grad is None for p in fm.parameters())
    assert flags == {n: p.requires_grad for n, p in fm.named_parameters()}
    assert fm.training
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_emulator_gradients_are_compared_with_the_mapped_fm_layers(make_tiny_model):
    # Prepare: FedOT emulator (FM layers 0, 1, 3) with random adapter LoRA, plugged into the FM
    fm = make_tiny_model("bert")
    config = FedPFTConfig(method="fedot")
    emulator = add_emulator_lora(build_emulator(fm, config), config)
    fm = add_lora(fm, config)
    _randomise_lora_(emulator)
    plug_in_mapped_(fm, trainable_state(emulator), (0, 1, 3))
    rename = lambda state: full_model_names(state, (0, 1, 3), "encoder.layer")  # noqa: E731

    # Execute
    result = GradientProbe(_batch(fm), rename=rename).measure(fm, emulator, "init")

    # Assert: finite, and the compared FM tensors are those of layers 0 and 3 (+ head)
    assert math.isfinite(result["grad_rel_error_init"]) and result["grad_rel_error_init"] > 0
    names = set(rename(trainable_gradients(emulator, _batch(fm))))
    assert any(".layer.3." in n for n in names) and not any(".layer.2." in n for n in names)


def test_probe_batch_is_the_first_examples_of_the_first_batch():
    batches = [{"input_ids": torch.arange(40).view(40, 1), "labels": torch.zeros(40, dtype=torch.long)},
               {"input_ids": torch.ones(40, 1), "labels": torch.ones(40, dtype=torch.long)}]

    batch = probe_batch(batches, examples=32)

    assert torch.equal(batch["input_ids"].view(-1), torch.arange(32))
    with pytest.raises(ValueError, match="labels"):
        probe_batch([{"input_ids": torch.ones(2, 1)}])
