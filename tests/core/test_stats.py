"""Activation statistics: per-neuron counts on clients, activity scores on the server, the neurons updated."""
import pytest
import torch

from fedpft_algo.core.aggregation import sum_tensors
from fedpft_algo.core.arch import arch_of, find_layers, layer_linear
from fedpft_algo.core.stats import STATS_PREFIX, ActivationStatistics, activity_scores, select_updated_neurons

FFN = 64  # tiny models' FFN width


def _fixed_activations() -> torch.Tensor:
    """(2, 3, FFN) post-activation values: neuron 0 varies, neuron 1 is 0.5 everywhere, the rest are 0."""
    acts = torch.zeros(2, 3, FFN)
    acts[..., 0] = torch.tensor([[0.0, 1.0, -2.0], [3.0, 0.0, 0.0]])
    acts[..., 1] = 0.5
    return acts


def _record(model, layer: int, acts: torch.Tensor, mask=None, times: int = 1) -> dict:
    """Run ``acts`` through layer ``layer``'s FFN output projection with the recorder attached."""
    out_proj = layer_linear(find_layers(model)[layer], arch_of(model).ffn_out)
    with ActivationStatistics(model, [layer]) as recorder:
        recorder.mask = mask
        for _ in range(times):
            out_proj(acts)
    assert not out_proj._forward_pre_hooks, "the recorder must remove its hooks"
    return recorder.counts()


def _counts(layer: int, zeros, abs_sum, positions: int) -> dict:
    return {f"{STATS_PREFIX}{layer}.zeros": torch.tensor(zeros, dtype=torch.int64),
            f"{STATS_PREFIX}{layer}.abs_sum": torch.tensor(abs_sum, dtype=torch.float64),
            f"{STATS_PREFIX}{layer}.positions": torch.tensor([positions], dtype=torch.int64)}


def test_counts_exclude_padding_positions_and_accumulate_over_batches(make_tiny_model):
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the last position of row 1 is padding (its 0 is not counted)

    counts = _record(make_tiny_model("bert"), 2, _fixed_activations(), mask, times=2)

    assert list(counts) == [f"{STATS_PREFIX}2.zeros", f"{STATS_PREFIX}2.abs_sum", f"{STATS_PREFIX}2.positions"]
    zeros, abs_sum = counts[f"{STATS_PREFIX}2.zeros"], counts[f"{STATS_PREFIX}2.abs_sum"]
    assert counts[f"{STATS_PREFIX}2.positions"].tolist() == [10]          # 5 valid positions, twice
    assert zeros[:3].tolist() == [4, 0, 10] and bool((zeros[2:] == 10).all())  # neuron 0: two exact zeros per pass
    assert abs_sum[:2].tolist() == [12.0, 5.0] and bool((abs_sum[2:] == 0).all())
    assert (zeros.dtype, abs_sum.dtype) == (torch.int64, torch.float64)


def test_without_a_mask_every_position_counts(make_tiny_model):
    counts = _record(make_tiny_model("llama"), 1, _fixed_activations())

    assert counts[f"{STATS_PREFIX}1.positions"].tolist() == [6]
    assert counts[f"{STATS_PREFIX}1.zeros"][0].item() == 3


def test_a_layer_without_recorded_activations_is_an_error(make_tiny_model):
    with ActivationStatistics(make_tiny_model("bert"), [1]) as recorder:
        pass
    with pytest.raises(RuntimeError, match="no activations were recorded for layer 1"):
        recorder.counts()


def test_activity_scores_from_hand_counted_values():
    counts = _counts(3, [2, 0, 5], [6.0, 2.5, 0.0], 5)

    apoz = activity_scores(counts, "apoz")
    mean_abs = activity_scores(counts, "mean_abs")

    assert list(apoz) == [3] and torch.allclose(apoz[3], torch.tensor([0.6, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(mean_abs[3], torch.tensor([1.2, 0.5, 0.0], dtype=torch.float64))


def test_pooled_counts_weight_clients_by_their_positions():
    small = _counts(1, [5, 0], [0.0, 10.0], 5)      # a client with 5 positions: neuron 0 always zero
    large = _counts(1, [0, 15], [30.0, 0.0], 15)    # a client with 15 positions: neuron 1 always zero

    pooled = sum_tensors([small, large])  # what the server does with the uploads
    apoz = activity_scores(pooled, "apoz")[1]
    mean_abs = activity_scores(pooled, "mean_abs")[1]

    # per position, not a mean of the two clients' scores (which would give 0.5 and 0.5)
    assert torch.allclose(apoz, torch.tensor([1 - 5 / 20, 1 - 15 / 20], dtype=torch.float64))
    assert torch.allclose(mean_abs, torch.tensor([30 / 20, 10 / 20], dtype=torch.float64))


@pytest.mark.parametrize("statistic, positions, match", [("median", 5, r"unknown activation statistic 'median' "
                                                                      r"\(allowed: apoz, mean_abs\)"),
                                                         ("apoz", 0, "layer 4: no positions were counted")])
def test_activity_scores_reject_bad_input(statistic, positions, match):
    with pytest.raises(ValueError, match=match):
        activity_scores(_counts(4, [0], [0.0], positions), statistic)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
def test_selected_share_is_the_update_ratio_of_least_active_neurons(ratio):
    score = torch.arange(FFN, dtype=torch.float64).flip(0)  # neuron 63 is the least active

    updated = select_updated_neurons({2: score, 3: score.flip(0)}, ratio, torch.Generator().manual_seed(0))

    count = int(ratio * FFN)
    assert updated[2].tolist() == list(range(FFN - count, FFN))   # sorted indices
    assert updated[3].tolist() == list(range(count))


def test_ties_are_broken_at_random_but_reproducibly_with_a_seeded_generator():
    tied = torch.zeros(FFN, dtype=torch.float64)  # APoZ with GELU: every neuron ties

    def pick(seed):
        return select_updated_neurons({1: tied}, 0.5, torch.Generator().manual_seed(seed))[1]

    assert torch.equal(pick(7), pick(7))
    assert not torch.equal(pick(7), pick(8))
    assert pick(7).numel() == FFN // 2 and pick(7).unique().numel() == FFN // 2


def test_ties_never_push_a_more_active_neuron_into_the_updated_share():
    score = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 2.0, 0.0, 1.0], dtype=torch.float64)

    for seed in range(5):
        updated = select_updated_neurons({0: score}, 0.5, torch.Generator().manual_seed(seed))[0]
        assert updated.tolist() == [0, 2, 4, 6]
    two_of_three = {tuple(select_updated_neurons({0: score}, 0.75, torch.Generator().manual_seed(s))[0].tolist())
                    for s in range(20)}
    assert all(set(pick) >= {0, 2, 4, 6} and len(set(pick) & {1, 3, 7}) == 2 for pick in two_of_three)
    assert len(two_of_three) > 1  # the tied 1.0s are chosen at random
