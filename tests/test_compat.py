"""``fedpft_algo.compat``: the fixes that let ``import fedml`` work on machines FedML 0.9.6 was not pinned for."""
import numpy as np

from fedpft_algo import compat


def test_numpy_2_gets_back_the_two_aliases_wandb_reads(monkeypatch):
    # NumPy 2 has neither name; FedML's wandb 0.13.2 reads both while `import fedml` runs
    for alias in ("float_", "complex_"):
        monkeypatch.delattr(np, alias, raising=False)
    assert "float_" not in vars(np) and "complex_" not in vars(np)
    compat.ensure_numpy_aliases()
    assert np.float_ is np.float64 and np.complex_ is np.complex128


def test_numpy_aliases_that_exist_are_left_alone(monkeypatch):
    sentinel = object()
    monkeypatch.setattr(np, "float_", sentinel, raising=False)
    compat.ensure_numpy_aliases()
    assert np.float_ is sentinel
