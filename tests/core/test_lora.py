"""LoRA on FM and sub-FM, trainable_state and plug_in_ (FedPFT §3)."""
import copy

import pytest
import torch

from fedpft_algo.core.arch import get_arch
from fedpft_algo.core.compression import build_sub_model
from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.lora import add_lora, is_trainable_name, lora_config, plug_in_, trainable_state


def _trainable_names(model):
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def _state_copy(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _fm_and_sub(model_factory, model_type, ratio=0.25):
    """LoRA-wrapped (FM, sub-FM); the sub-FM's LoRA/head tensors are random so a plug-in changes all of them."""
    fm = model_factory(model_type)
    config = FedPFTConfig(ffn_keep_ratio=ratio)
    sub, _ = build_sub_model(fm, config)
    fm_peft, sub_peft = add_lora(fm, config), add_lora(sub, config)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in sub_peft.named_parameters():
            if is_trainable_name(name):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return fm_peft.eval(), sub_peft.eval()


def test_lora_config_follows_fedpft_config():
    config = FedPFTConfig(lora_r=4, lora_alpha=16, lora_dropout=0.2)

    lora = lora_config("distilbert", config)

    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.bias) == (4, 16, 0.2, "none")
    assert set(lora.target_modules) == set(get_arch("distilbert").attention)
    assert lora.modules_to_save == ["pre_classifier", "classifier"]


def test_add_lora_trains_only_adapters_and_head(make_tiny_model):
    # Prepare: tiny BERT, 4 layers x 4 projections x (A: 8x32 + B: 32x8), head 32x2 + 2
    model = make_tiny_model("bert")

    # Execute
    peft_model = add_lora(model, FedPFTConfig(lora_r=8))

    # Assert
    names = _trainable_names(peft_model)
    assert all(is_trainable_name(name) for name in names)
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == 4 * 4 * 2 * 8 * 32 + 66


def test_add_lora_gives_fm_and_sub_model_identical_trainable_names(tiny_model_type, make_tiny_model):
    fm_peft, sub_peft = _fm_and_sub(make_tiny_model, tiny_model_type)

    plain = make_tiny_model(tiny_model_type)
    head_tensors = sum(len(list(plain.get_submodule(path).parameters())) for path in get_arch(tiny_model_type).head)

    fm_names, sub_names = _trainable_names(fm_peft), _trainable_names(sub_peft)

    assert fm_names == sub_names
    assert len(fm_names) == 4 * 4 * 2 + head_tensors  # LoRA A and B of 4 projections in 4 layers + the head
    assert list(trainable_state(fm_peft)) == list(trainable_state(sub_peft))


def test_trainable_state_holds_only_lora_and_head_tensors(make_tiny_model):
    # Prepare
    peft_model = add_lora(make_tiny_model("bert"), FedPFTConfig())
    expected = [name for name in peft_model.state_dict()
                if "lora_A." in name or "lora_B." in name or ".modules_to_save." in name]

    # Execute
    state = trainable_state(peft_model)

    # Assert
    assert list(state) == expected
    assert len(state) == 4 * 4 * 2 + 2
    assert not any("base_layer" in name or "original_module" in name for name in state)


def test_trainable_state_is_a_copy(make_tiny_model):
    peft_model = add_lora(make_tiny_model("bert"), FedPFTConfig())
    before = _state_copy(peft_model)

    state = trainable_state(peft_model)
    for tensor in state.values():
        tensor.add_(1.0)

    after = peft_model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())


def test_trainable_state_without_lora_raises(make_tiny_model):
    with pytest.raises(AssertionError, match="wrap it with add_lora first"):
        trainable_state(make_tiny_model("bert"))


def test_plug_in_changes_exactly_the_lora_and_head_tensors(tiny_model_type, make_tiny_model):
    # Prepare
    fm_peft, sub_peft = _fm_and_sub(make_tiny_model, tiny_model_type)
    state = trainable_state(sub_peft)
    before = _state_copy(fm_peft)

    # Execute
    plug_in_(fm_peft, state)

    # Assert: every tensor of the FM is compared
    after = fm_peft.state_dict()
    assert after.keys() == before.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == set(state)
    for name, tensor in state.items():
        assert torch.equal(after[name], tensor), name


def test_plug_in_of_ratio_one_sub_model_gives_identical_fm_logits(make_tiny_model, tiny_inputs):
    # Prepare: with ratio 1.0 the sub-FM is the FM, so after plug-in the two compute the same function
    fm_peft, sub_peft = _fm_and_sub(make_tiny_model, "bert", ratio=1.0)
    inputs = tiny_inputs(fm_peft)

    # Execute
    plug_in_(fm_peft, trainable_state(sub_peft))

    # Assert
    with torch.no_grad():
        assert torch.allclose(fm_peft(**inputs).logits, sub_peft(**inputs).logits)


def test_plug_in_with_unknown_key_raises(make_tiny_model):
    fm_peft, sub_peft = _fm_and_sub(make_tiny_model, "bert")
    state = trainable_state(sub_peft)
    state["base_model.model.bert.extra.lora_A.default.weight"] = torch.zeros(8, 32)

    with pytest.raises(KeyError,
                       match=r"unknown \['base_model.model.bert.extra.lora_A.default.weight'\], missing \[\]"):
        plug_in_(fm_peft, state)


def test_plug_in_with_missing_key_raises(make_tiny_model):
    fm_peft, sub_peft = _fm_and_sub(make_tiny_model, "bert")
    state = trainable_state(sub_peft)
    dropped = next(iter(state))
    del state[dropped]

    with pytest.raises(KeyError, match=rf"unknown \[\], missing \['{dropped}'\]"):
        plug_in_(fm_peft, state)


def test_plug_in_with_wrong_shape_raises_and_changes_nothing(make_tiny_model):
    # Prepare: the last key gets a wrong shape, so a partial write would show on the earlier keys
    fm_peft, sub_peft = _fm_and_sub(make_tiny_model, "bert")
    state = trainable_state(sub_peft)
    name = list(state)[-1]
    state[name] = torch.zeros(3, 3)
    before = _state_copy(fm_peft)

    # Execute / Assert
    with pytest.raises(ValueError, match=rf"plug-in shape mismatch for {name}: got \(3, 3\), model has"):
        plug_in_(fm_peft, state)
    after = fm_peft.state_dict()
    assert all(torch.equal(after[key], tensor) for key, tensor in before.items())


def test_plug_in_works_on_a_deep_copy_independently(make_tiny_model):
    fm_peft, sub_peft = _fm_and_sub(make_tiny_model, "bert")
    twin = copy.deepcopy(fm_peft)
    before = _state_copy(twin)

    plug_in_(fm_peft, trainable_state(sub_peft))

    assert all(torch.equal(twin.state_dict()[key], tensor) for key, tensor in before.items())


@pytest.mark.parametrize("model_type", ["bert", "mpnet", "vit"])
def test_gradient_checkpointing_gives_the_same_lora_gradients(make_tiny_model, model_type):
    # Prepare: two copies of one LoRA-wrapped sub-FM in train mode (dropout on), one checkpointed
    from tests.conftest import build_tiny_inputs
    from fedpft_algo.core.lora import enable_gradient_checkpointing

    config = FedPFTConfig(lora_dropout=0.1)
    sub, _ = build_sub_model(make_tiny_model(model_type), config)
    plain, checkpointed = add_lora(copy.deepcopy(sub), config).train(), add_lora(copy.deepcopy(sub), config).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert enable_gradient_checkpointing(checkpointed) == 4 and enable_gradient_checkpointing(checkpointed) == 0
    inputs = build_tiny_inputs(plain, batch=3)

    # Execute: the same seeded step on both
    grads, kept = [], []
    for model in (plain, checkpointed):
        torch.manual_seed(3)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            logits = model(**inputs).logits
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1])).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        kept.append(sum(saved))

    # Assert: far fewer activations kept for the backward pass; no LoRA/head gradient changes
    # (dropout is replayed from the saved RNG state)
    assert kept[1] < kept[0] / 3, kept
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)
