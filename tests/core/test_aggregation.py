"""Server aggregation: weighted / uniform averaging of uploads and summing of statistics."""
import copy
from collections import OrderedDict

import pytest
import torch

from fedpft_algo.core.aggregation import sum_tensors, weighted_average


def _uploads():
    return [
        (1, OrderedDict(a=torch.tensor([[0.0, 4.0]]), b=torch.tensor([2.0]))),
        (3, OrderedDict(a=torch.tensor([[4.0, 8.0]]), b=torch.tensor([-2.0]))),
    ]


def _assert_same(expected, actual):
    assert len(expected) == len(actual)
    for (n_expected, t_expected), (n_actual, t_actual) in zip(expected, actual):
        assert n_expected == n_actual
        assert list(t_expected) == list(t_actual)
        for key in t_expected:
            assert torch.equal(t_expected[key], t_actual[key]), key


@pytest.mark.parametrize("weighting, expected_a, expected_b", [
    ("weighted", [[3.0, 7.0]], [-1.0]),   # (1 * x1 + 3 * x2) / 4
    ("uniform", [[2.0, 6.0]], [0.0]),     # (x1 + x2) / 2
])
def test_weighted_average_matches_hand_computed_values(weighting, expected_a, expected_b):
    # Prepare
    uploads = _uploads()

    # Execute
    averaged = weighted_average(uploads, weighting)

    # Assert
    assert list(averaged) == ["a", "b"]
    assert torch.equal(averaged["a"], torch.tensor(expected_a))
    assert torch.equal(averaged["b"], torch.tensor(expected_b))


def test_weighted_average_defaults_to_sample_count_weighting():
    assert torch.equal(weighted_average(_uploads())["a"], torch.tensor([[3.0, 7.0]]))


def test_weighted_average_keeps_dtype_and_shape():
    uploads = [(2, {"w": torch.ones(2, 3, dtype=torch.float16)}), (2, {"w": torch.zeros(2, 3, dtype=torch.float16)})]

    averaged = weighted_average(uploads)

    assert averaged["w"].dtype == torch.float16
    assert torch.equal(averaged["w"], torch.full((2, 3), 0.5, dtype=torch.float16))


def test_weighted_average_of_one_upload_is_that_upload():
    upload = (5, {"w": torch.tensor([1.5, -2.25])})

    assert torch.equal(weighted_average([upload])["w"], torch.tensor([1.5, -2.25]))


@pytest.mark.parametrize("weighting", ["weighted", "uniform"])
def test_weighted_average_does_not_modify_inputs(weighting):
    uploads = _uploads()
    before = copy.deepcopy(uploads)

    averaged = weighted_average(uploads, weighting)
    averaged["a"].add_(100.0)  # the result shares no storage with an input either

    _assert_same(before, uploads)


def test_weighted_average_with_mismatched_keys_raises():
    uploads = _uploads()
    uploads[1] = (3, OrderedDict(a=torch.zeros(1, 2), c=torch.zeros(1)))

    with pytest.raises(KeyError, match="upload 1 has different tensor names than upload 0"):
        weighted_average(uploads)


def test_weighted_average_of_nothing_raises():
    with pytest.raises(ValueError, match="no client uploads to aggregate"):
        weighted_average([])


@pytest.mark.parametrize("counts", [(0, 3), (1, -3)])
def test_weighted_average_with_non_positive_counts_raises(counts):
    uploads = [(n, tensors) for n, (_, tensors) in zip(counts, _uploads())]

    with pytest.raises(ValueError, match="sample counts must be positive"):
        weighted_average(uploads)


def test_weighted_average_with_unknown_weighting_raises():
    with pytest.raises(ValueError, match="weighting must be 'weighted' or 'uniform', got 'median'"):
        weighted_average(_uploads(), "median")


def test_sum_tensors_adds_elementwise_without_mutating_inputs():
    # Prepare: zero counts per neuron from three clients
    uploads = [{"layer1": torch.tensor(counts)} for counts in ([1, 0, 2], [0, 5, 1], [3, 3, 3])]
    before = copy.deepcopy(uploads)

    # Execute
    total = sum_tensors(uploads)

    # Assert
    assert torch.equal(total["layer1"], torch.tensor([4, 8, 6]))
    for original, now in zip(before, uploads):
        assert torch.equal(original["layer1"], now["layer1"])


def test_sum_tensors_with_mismatched_keys_raises():
    with pytest.raises(KeyError, match="statistic uploads have different tensor names"):
        sum_tensors([{"a": torch.zeros(2)}, {"b": torch.zeros(2)}])


def test_sum_tensors_of_nothing_raises():
    with pytest.raises(ValueError, match="nothing to sum"):
        sum_tensors([])
