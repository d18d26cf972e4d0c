"""Client partitions (fedpft_algo.data.partition): FedML's Dirichlet split, seeded, with a minimum per client."""
import json
import sys

import numpy as np
import pytest

from fedpft_algo.data import partition, partition_records, partition_table
from fedpft_algo.data.partition import skew
from fedpft_algo.errors import DataError

LABELS = np.repeat(np.arange(10), 200)  # 10 balanced classes, 2,000 examples
NAMES = [f"c{k}" for k in range(10)]


def _assert_cover_once(parts, n):
    merged = np.concatenate(list(parts.values()))
    assert merged.dtype == np.int64 and np.array_equal(np.sort(merged), np.arange(n))


@pytest.mark.parametrize("method", ["hetero", "homo"])
def test_partition_covers_every_example_once_and_is_seeded(method):
    a = partition(LABELS, 10, method, alpha=0.5, seed=3)
    b = partition(LABELS, 10, method, alpha=0.5, seed=3)
    c = partition(LABELS, 10, method, alpha=0.5, seed=4)

    _assert_cover_once(a, len(LABELS))
    assert sorted(a) == list(range(10))
    assert all(np.array_equal(a[i], b[i]) for i in a)
    assert not all(np.array_equal(a[i], c[i]) for i in a)


def test_partition_hetero_equals_fedml_own_partitioner():
    from fedml.core.data.noniid_partition import non_iid_partition_with_dirichlet_distribution

    np.random.seed(11)
    expected = non_iid_partition_with_dirichlet_distribution(LABELS, 8, 10, 0.3)

    actual = partition(LABELS, 8, "hetero", alpha=0.3, seed=11, min_per_client=10)

    assert all(np.array_equal(actual[i], expected[i]) for i in range(8))


def test_partition_leaves_the_global_numpy_stream_untouched():
    np.random.seed(5)
    expected = np.random.rand(3)
    np.random.seed(5)
    partition(LABELS, 4, "hetero", alpha=0.5, seed=0)
    assert np.array_equal(np.random.rand(3), expected)


def test_partition_smaller_alpha_gives_more_label_skew():
    measured = {alpha: skew(partition_records(LABELS, partition(LABELS, 10, "hetero", alpha, seed=0), NAMES))
                for alpha in (0.1, 10.0)}

    # measured: alpha 0.1 -> max share 0.671, entropy 1.139 bits; alpha 10 -> 0.155, 3.238 bits (max log2(10)=3.32)
    assert measured[0.1]["mean_max_label_share"] == pytest.approx(0.6713, abs=1e-4)
    assert measured[10.0]["mean_max_label_share"] == pytest.approx(0.1552, abs=1e-4)
    assert measured[0.1]["mean_label_entropy_bits"] == pytest.approx(1.1389, abs=1e-4)
    assert measured[10.0]["mean_label_entropy_bits"] == pytest.approx(3.2379, abs=1e-4)
    homo = skew(partition_records(LABELS, partition(LABELS, 10, "homo", seed=0), NAMES))
    assert homo["mean_max_label_share"] < measured[10.0]["mean_max_label_share"] < measured[0.1]["mean_max_label_share"]


@pytest.mark.parametrize("alpha,min_per_client", [(0.05, 100), (0.1, 150), (0.5, 0)])
def test_partition_respects_min_per_client(alpha, min_per_client):
    parts = partition(LABELS, 10, "hetero", alpha=alpha, seed=0, min_per_client=min_per_client)
    _assert_cover_once(parts, len(LABELS))
    assert min(len(p) for p in parts.values()) >= min_per_client


def test_partition_homo_sizes_differ_by_at_most_one():
    sizes = [len(p) for p in partition(np.arange(103) % 3, 10, "homo", seed=0, min_per_client=10).values()]
    assert sorted(sizes) == [10] * 7 + [11] * 3


def test_partition_records_and_table():
    labels = np.array([0, 0, 1, 1, 1, 2])
    parts = {0: np.array([0, 2]), 1: np.array([1, 3, 4, 5])}

    records = partition_records(labels, parts, ["neg", "neu", "pos"])
    table = partition_table(labels, parts, ["neg", "neu", "pos"])

    assert records == json.loads(json.dumps(records))
    assert records[1] == {"client": 1, "size": 4, "label_counts": {"neg": 1, "neu": 2, "pos": 1},
                          "max_label_share": 0.5, "label_entropy_bits": 1.5}
    assert table.splitlines() == ["client   size    neg    neu    pos",
                                  "     0      2      1      1      0",
                                  "     1      4      1      2      1",
                                  " total      6      2      3      1"]


@pytest.mark.parametrize("kwargs,pattern", [
    ({"alpha": 0.0}, r"Dirichlet alpha must be > 0, got 0\.0"),
    ({"alpha": -1.0}, r"Dirichlet alpha must be > 0"),
    ({"client_num": 2001}, r"2001 clients but only 2000 training examples"),
    ({"client_num": 0}, r"client_num must be a positive integer, got 0"),
    ({"method": "iid"}, r"partition method 'iid' is not one of hetero, homo"),
    ({"client_num": 100, "min_per_client": 21}, r"100 clients x min_per_client 21 > 2000"),
    ({"min_per_client": -1}, r"min_per_client must be a non-negative integer"),
    ({"labels": np.array([], dtype=np.int64)}, r"non-empty 1-D array"),
])
def test_partition_bad_input_raises_data_error(kwargs, pattern):
    args = {"labels": LABELS, "client_num": 10, "method": "hetero", "alpha": 0.5, "seed": 0, **kwargs}
    with pytest.raises(DataError, match=pattern):
        partition(**args)


def test_partition_gives_up_when_no_draw_meets_the_minimum(monkeypatch):
    # the package exports the function `partition`, which hides the submodule of the same name
    monkeypatch.setattr(sys.modules["fedpft_algo.data.partition"], "MAX_DRAWS", 3)
    with pytest.raises(DataError, match=r"no Dirichlet\(alpha=0\.01\) draw in 3 gave every one of 10 clients >= 190"):
        partition(LABELS, 10, "hetero", alpha=0.01, seed=0, min_per_client=190)
