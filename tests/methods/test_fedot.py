"""FedOT (federated Offsite-Tuning): the emulator's budget rule, skeleton, adapter LoRA, plug-in and distillation."""
import copy

import pytest
import torch

from fedpft_algo.core.arch import find_layers
from fedpft_algo.core.compression import build_sub_model, encoder_parameters
from fedpft_algo.config import FedPFTConfig
from fedpft_algo.methods.fedot import (LAYER_MAP_ATTR, adapter_layers, add_emulator_lora, align_emulator_, build_emulator,
                               build_emulator_skeleton, distillation_targets, emulator_layer_map, full_model_names,
                               plug_in_mapped_, uniform_layer_map)
from fedpft_algo.core.lora import add_lora, is_trainable_name, plug_in_, trainable_state
from fedpft_algo.models import model_class_for

FEDOT = FedPFTConfig(method="fedot")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("layers, kept_middle, expected", [
    (6, 2, (0, 1, 3, 5)),                      # MiniLM: middle 1..4 in segments [1,2], [3,4]
    (6, 4, (0, 1, 2, 3, 4, 5)),                # keeping every middle layer is the FM
    (12, 3, (0, 1, 2, 5, 8, 10, 11)),          # BERT-base shape: 2 + 3 + 2
    (12, 1, (0, 1, 2, 10, 11)),
    (4, 1, (0, 1, 3)),
    (2, 1, (0, 1)),                            # no middle: nothing to drop
])
def test_uniform_layer_map_keeps_adapters_and_segment_starts(layers, kept_middle, expected):
    assert uniform_layer_map(layers, kept_middle) == expected


@pytest.mark.parametrize("layer_map, targets, adapters", [
    ((0, 1, 3, 5), (0, 2, 4, 5), (0, 3)),
    ((0, 1, 2, 5, 8, 10, 11), (0, 1, 4, 7, 9, 10, 11), (0, 1, 5, 6)),
    ((0, 1, 3), (0, 2, 3), (0, 2)),
])
def test_each_emulator_layer_stands_for_the_last_fm_layer_it_replaces(layer_map, targets, adapters):
    assert distillation_targets(layer_map) == targets
    assert adapter_layers(layer_map) == adapters


def test_budget_rule_minilm_matches_the_sub_model_within_half_a_layer():
    # Prepare: the packaged MiniLM's configuration only (no weights)
    from fedpft_algo.models import load_model_config

    model_config = load_model_config("minilm-l6", 2, verify=False)

    # Execute
    layer_map = emulator_layer_map(model_config, FEDOT)
    emulator = build_emulator_skeleton(model_config, FEDOT, model_class=model_class_for(model_config))

    # Assert: 1 + 2 + 1 layers; sub-FM 7,103,232 vs emulator 7,097,856 transformer-layer parameters
    assert layer_map == (0, 1, 3, 5)
    assert encoder_parameters(emulator) == 4 * 1_774_464 == 7_097_856
    assert abs(encoder_parameters(emulator) - 7_103_232) < 1_774_464 / 2


def test_budget_rule_bert_base_shape_keeps_seven_layers():
    from transformers import AutoConfig

    model_config = AutoConfig.for_model("bert", num_labels=2)  # 12 x 768, FFN 3072

    assert emulator_layer_map(model_config, FEDOT) == (0, 1, 2, 5, 8, 10, 11)


def test_budget_follows_the_compression_settings():
    from transformers import AutoConfig

    model_config = AutoConfig.for_model("bert", num_labels=2)

    # keeping all FFN neurons makes the sub-FM the FM: the emulator keeps every layer
    assert emulator_layer_map(model_config, FedPFTConfig(method="fedot", ffn_keep_ratio=1.0)) == tuple(range(12))


@pytest.mark.parametrize("model_type", ["bert", "roberta", "mpnet", "distilbert", "vit"])
def test_skeleton_from_config_loads_the_server_emulator_strictly(model_type, make_tiny_model, tiny_inputs):
    # Prepare: the server's emulator (cut from FM weights) and the client's skeleton (FM config only)
    fm = make_tiny_model(model_type)
    emulator = build_emulator(fm, FEDOT).eval()
    fm_config = copy.deepcopy(fm.config)

    # Execute
    skeleton = build_emulator_skeleton(fm_config, FEDOT, model_class=model_class_for(fm_config)).eval()
    skeleton.load_state_dict(emulator.state_dict(), strict=True)

    # Assert: same architecture and map; identical outputs; the FM itself is untouched
    assert getattr(skeleton.config, LAYER_MAP_ATTR) == [0, 1, 3]
    assert len(find_layers(emulator)) == 3 and len(find_layers(fm)) == 4
    inputs = tiny_inputs(fm)
    with torch.no_grad():
        assert torch.equal(skeleton(**inputs).logits, emulator(**inputs).logits)
    peft_keys = set(add_emulator_lora(skeleton, FEDOT).state_dict())
    assert peft_keys == set(add_emulator_lora(copy.deepcopy(emulator), FEDOT).state_dict())


def test_emulator_lora_trains_only_the_adapter_layers_and_head(make_tiny_model):
    emulator = add_emulator_lora(build_emulator(make_tiny_model("bert"), FEDOT), FEDOT)

    names = [n for n, p in emulator.named_parameters() if p.requires_grad]

    layers = {int(n.split("encoder.layer.")[1].split(".")[0]) for n in names if "encoder.layer." in n}
    assert layers == {0, 2}  # emulator layers 0 and 2 = FM layers 0 and 3
    assert all(is_trainable_name(n) for n in names)
    assert any("classifier.modules_to_save" in n for n in names)


def _randomise_trainable_(model, seed=7):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if is_trainable_name(name):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))


def test_plug_in_mapped_changes_exactly_the_mapped_lora_and_head(make_tiny_model):
    # Prepare: FM with LoRA everywhere; emulator with random adapter LoRA + head
    fm = make_tiny_model("bert")
    emulator = add_emulator_lora(build_emulator(fm, FEDOT), FEDOT)
    fm_peft = add_lora(fm, FEDOT)
    _randomise_trainable_(emulator)
    before = {k: v.clone() for k, v in fm_peft.state_dict().items()}
    state = trainable_state(emulator)

    # Execute
    plug_in_mapped_(fm_peft, state, (0, 1, 3))

    # Assert: exactly the renamed tensors changed (emulator layer 2 -> FM layer 3), with the given values
    after = fm_peft.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    expected = set(full_model_names(state, (0, 1, 3), "encoder.layer"))
    assert changed == expected
    assert any(".encoder.layer.3." in k for k in changed) and not any(".layer.1." in k or ".layer.2." in k
                                                                        for k in changed)
    for name, tensor in full_model_names(state, (0, 1, 3), "encoder.layer").items():
        assert torch.equal(after[name], tensor)


def test_plug_in_mapped_rejects_unknown_and_misshapen_tensors(make_tiny_model):
    fm_peft = add_lora(make_tiny_model("bert"), FEDOT)
    state = trainable_state(add_emulator_lora(build_emulator(make_tiny_model("bert"), FEDOT), FEDOT))

    with pytest.raises(KeyError, match="unknown"):
        plug_in_mapped_(fm_peft, {**state, "base_model.model.bert.pooler.lora_A.x": torch.zeros(1)}, (0, 1, 3))
    head = next(k for k in state if "modules_to_save" in k)
    with pytest.raises(KeyError, match="missing head"):
        plug_in_mapped_(fm_peft, {k: v for k, v in state.items() if k != head}, (0, 1, 3))
    bad = dict(state)
    bad[head] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        plug_in_mapped_(fm_peft, bad, (0, 1, 3))


def test_fedpft_plug_in_stays_strict_for_emulator_tensors(make_tiny_model):
    fm_peft = add_lora(make_tiny_model("bert"), FEDOT)
    state = trainable_state(add_emulator_lora(build_emulator(make_tiny_model("bert"), FEDOT), FEDOT))

    with pytest.raises(KeyError, match="missing"):
        plug_in_(fm_peft, state)


def test_distillation_lowers_the_layer_loss_and_trains_only_the_middle(make_tiny_model):
    # Prepare: tiny BERT FM, its undistilled emulator, random token batches as "public data"
    torch.manual_seed(0)
    fm = make_tiny_model("bert")
    emulator = build_emulator(fm, FEDOT)
    before = {k: v.clone() for k, v in emulator.state_dict().items()}
    generator = torch.Generator().manual_seed(3)
    batches = [{"input_ids": torch.randint(5, 100, (8, 12), generator=generator),
                "attention_mask": torch.ones(8, 12, dtype=torch.long)} for _ in range(6)]

    # Execute
    report = align_emulator_(fm, emulator, batches, batches[:2], steps=40, lr=3e-3, warmup_ratio=0.0)

    # Assert: loss falls; only the middle emulator layer (index 1) changed
    assert report.steps == 40
    assert report.mean_after < 0.7 * report.mean_before
    changed = {k for k, v in emulator.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("bert.encoder.layer.1.") for k in changed)
    assert set(report.changed) == {k for k in before if k.startswith("bert.encoder.layer.1.")}


def test_sub_model_and_emulator_have_the_same_budget_on_tiny_bert(make_tiny_model):
    fm = make_tiny_model("bert")
    sub, _ = build_sub_model(fm, FedPFTConfig())
    emulator = build_emulator(fm, FEDOT)
    per_layer = encoder_parameters(fm) // 4

    assert abs(encoder_parameters(emulator) - encoder_parameters(sub)) <= per_layer / 2
