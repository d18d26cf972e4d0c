"""Client-cost options: backbone dropout off, one LoRA dropout mask for Q/K/V, compile; no grad for embeddings."""
import pytest
import torch
from torch import nn

from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.arch import find_layers, get_arch
from fedpft_algo.core.client_speed import (SharedDropout, apply_client_options_, disable_backbone_dropout_,
                                           share_qkv_lora_dropout_)
from fedpft_algo.core.lora import add_lora
from tests.conftest import build_tiny_inputs


def _client(make_tiny_model, model_type="bert", **values):
    config = FedPFTConfig(lora_dropout=0.5, **values)
    model = make_tiny_model(model_type)
    model.config.hidden_dropout_prob = getattr(model.config, "hidden_dropout_prob", 0.1)
    return add_lora(model, config), config


def _dropouts(model):
    return {name: m.p for name, m in model.get_base_model().named_modules() if isinstance(m, nn.Dropout)}


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_backbone_dropout_off_zeroes_backbone_dropouts_and_keeps_lora_and_head(make_tiny_model, model_type):
    model, _ = _client(make_tiny_model, model_type)
    before = _dropouts(model)

    changed = disable_backbone_dropout_(model)

    after = _dropouts(model)
    assert changed > 0 and any(p > 0 for name, p in before.items() if ".embeddings." in name)
    for name, p in after.items():
        lora_or_head = "lora_dropout" in name or "." not in name or name.split(".")[0] in get_arch(model_type).head
        assert p == (before[name] if lora_or_head else 0.0), name
    assert any(p == 0.5 for name, p in after.items() if "lora_dropout" in name)


def test_backbone_dropout_off_makes_training_mode_deterministic_apart_from_lora_and_head(make_tiny_model):
    # LoRA's and the head's dropout set to 0 here: what remains random in training mode is the backbone's
    model, _ = _client(make_tiny_model)
    for name, module in model.get_base_model().named_modules():
        parts = name.split(".")
        if isinstance(module, nn.Dropout) and ("lora_dropout" in parts or len(parts) == 1 or parts[0] == "classifier"):
            module.p = 0.0
    inputs = build_tiny_inputs(model.get_base_model())
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(**inputs).logits, model(**inputs).logits)
        disable_backbone_dropout_(model)
        assert torch.equal(model(**inputs).logits, model(**inputs).logits)


@pytest.mark.parametrize("model_type", ["bert", "mpnet", "llama"])
def test_shared_lora_dropout_gives_q_k_v_the_same_zero_pattern(make_tiny_model, model_type):
    # Prepare: record what lora_A of Q, K, V and O receive in one training forward
    model, _ = _client(make_tiny_model, model_type)
    assert share_qkv_lora_dropout_(model) == len(find_layers(model.get_base_model()))
    spec = get_arch(model_type)
    layer = find_layers(model.get_base_model())[1]
    seen = {}
    for path in spec.attention:
        lora_a = layer.get_submodule(path).lora_A["default"]
        lora_a.register_forward_pre_hook(lambda _m, inputs, path=path: seen.__setitem__(path, inputs[0].detach()))
    model.train()

    # Execute
    model(**build_tiny_inputs(model.get_base_model()))

    # Assert: Q, K, V saw one mask (the same zeros, the same tensor); O its own; half the entries dropped
    q, k, v, o = (seen[path] for path in spec.attention)
    assert torch.equal(q == 0, k == 0) and torch.equal(q == 0, v == 0) and torch.equal(q, v)
    assert 0.3 < (q == 0).float().mean() < 0.7
    assert not torch.equal(o == 0, q == 0) or q.shape != o.shape


def test_shared_lora_dropout_draws_a_new_mask_for_a_new_input_and_none_in_eval():
    dropout = SharedDropout(0.5).train()
    x = torch.ones(64, 64)
    first, again, other = dropout(x), dropout(x), dropout(x.clone())
    assert first is again and not torch.equal(first == 0, other == 0)
    x.add_(1)  # changed in place: a new mask
    assert dropout(x) is not first
    assert dropout.eval()(x) is x


def test_shared_lora_dropout_gradients_equal_three_separate_layers_with_that_mask(make_tiny_model):
    # The shared output feeds three lora_A's: the input's gradient sums the three paths (autograd), once
    model, _ = _client(make_tiny_model)
    share_qkv_lora_dropout_(model)
    model.train()
    loss = model(**build_tiny_inputs(model.get_base_model()), labels=torch.tensor([0, 1])).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)


def test_embeddings_record_no_autograd_graph_in_client_training(make_tiny_model):
    model, _ = _client(make_tiny_model, "mpnet")
    outputs = []
    embeddings = model.get_base_model().mpnet.embeddings
    embeddings.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    model.train()
    model(**build_tiny_inputs(model.get_base_model()))
    assert outputs[0].grad_fn is None and not outputs[0].requires_grad


def test_the_default_client_drops_backbone_dropout_and_shares_the_qkv_lora_mask(make_tiny_model):
    model, config = _client(make_tiny_model)
    before = _dropouts(model)

    apply_client_options_(model, config)

    after = _dropouts(model)
    assert any(p > 0 for p in before.values())
    assert all(p == 0 for name, p in after.items() if "lora_dropout" not in name and name.count(".") > 0
               and not name.startswith("classifier"))
    layer = find_layers(model.get_base_model())[0]
    assert layer.attention.self.query.lora_dropout["default"] is layer.attention.self.value.lora_dropout["default"]


def test_apply_client_options_paper_settings_change_nothing_and_compile_returns_a_compiled_forward(make_tiny_model):
    model, config = _client(make_tiny_model, client_backbone_dropout=True, shared_lora_dropout=False)
    before = _dropouts(model)
    assert apply_client_options_(model, config) is model and _dropouts(model) == before
    compiled = apply_client_options_(model, FedPFTConfig(compile=True, client_backbone_dropout=False,
                                                         shared_lora_dropout=True))
    assert compiled is not model and apply_client_options_(model, FedPFTConfig(compile=True)) is compiled
    assert "_fedpft_compiled" not in dict(model.named_modules())
    assert set(model.state_dict()) == set(add_lora(make_tiny_model("bert"), config).state_dict())
