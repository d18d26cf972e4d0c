"""Neuron-level alignment (``align_neurons_``): only the updated neurons' FFN entries may change."""
import pytest
import torch

from fedpft_algo.core.alignment import align_neurons_
from fedpft_algo.core.arch import arch_of, find_layers, layer_linear

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# compressed layer -> neurons to update (tiny models have 64 FFN neurons, 4 layers)
UPDATED = {1: torch.tensor([0, 5, 17, 40]), 2: torch.tensor([3, 63])}


def _ffn_tensors(model, index):
    """Layer ``index``'s FFN tensors: ``{name: neuron axis}`` and the names trained whole (b_out, FFN norm)."""
    spec, layer = arch_of(model), find_layers(model)[index]
    names = {id(p): n for n, p in model.named_parameters()}
    by_neuron, whole = {}, set()
    for path, axis in ((spec.ffn_in, 0), (spec.ffn_gate, 0), (spec.ffn_out, 1)):
        if path is None:
            continue
        linear = layer_linear(layer, path)
        by_neuron[names[id(linear.weight)]] = axis
        if linear.bias is not None:
            if axis == 0:
                by_neuron[names[id(linear.bias)]] = 0
            else:
                whole.add(names[id(linear.bias)])
    whole.update(names[id(p)] for p in layer.get_submodule(spec.ffn_norm).parameters())
    return by_neuron, whole


def _others(count: int, picked: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(count, dtype=torch.bool)
    keep[picked] = False
    return keep.nonzero().flatten()


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_align_neurons_changes_only_the_updated_neurons_entries(model_type, make_tiny_model, tiny_inputs):
    teacher, student = make_tiny_model(model_type, seed=0), make_tiny_model(model_type, seed=1)
    batches = [tiny_inputs(teacher, seed=seed) for seed in (1, 2)]
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    before = {k: v.clone() for k, v in student.state_dict().items()}

    report = align_neurons_(teacher, student, UPDATED, batches, batches[:1], steps=3, lr=1e-2)

    after = student.state_dict()
    by_neuron, whole = {}, set()
    for index, neurons in UPDATED.items():
        layer_neuron, layer_whole = _ffn_tensors(student, index)
        by_neuron.update((name, (axis, neurons)) for name, axis in layer_neuron.items())
        whole |= layer_whole
    assert len(by_neuron) == 3 * len(UPDATED)  # BERT: W_in, b_in, W_out; LLaMA: up, gate, down (no biases)
    for name, (axis, neurons) in by_neuron.items():
        old, new = before[name], after[name]
        frozen = _others(old.shape[axis], neurons)
        assert torch.equal(new.index_select(axis, frozen), old.index_select(axis, frozen)), name  # bit-identical
        moved = (new - old).index_select(axis, neurons).abs()
        if moved.dim() == 2:  # every updated neuron's row (column) changed somewhere
            moved = moved.amax(dim=1 - axis)
        assert bool((moved > 0).all()), f"{name}: an updated neuron did not change"
    for name, old in before.items():
        if name not in by_neuron and name not in whole:  # attention, embeddings, head, other layers
            assert torch.equal(after[name], old), name
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in teacher_before.items())
    assert set(report.changed) == {k for k, v in before.items() if not torch.equal(after[k], v)}
    assert set(by_neuron) <= set(report.changed)
    assert report.level == "neuron" and report.steps == 3


def test_align_neurons_with_no_updated_neuron_leaves_ffn_weights_identical(make_tiny_model, tiny_inputs):
    teacher, student = make_tiny_model("bert", seed=0), make_tiny_model("bert", seed=1)
    batches = [tiny_inputs(teacher)]
    by_neuron, _ = _ffn_tensors(student, 1)
    before = {name: student.state_dict()[name].clone() for name in by_neuron}

    report = align_neurons_(teacher, student, {1: torch.tensor([], dtype=torch.long)}, batches, batches, steps=2,
                            lr=1e-2)

    assert all(torch.equal(student.state_dict()[name], old) for name, old in before.items())
    assert not set(by_neuron) & set(report.changed)
