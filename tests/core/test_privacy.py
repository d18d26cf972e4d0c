"""Differential privacy on client uploads: clipping, noise, accounting, config checks."""
from collections import OrderedDict

import pytest
import torch

from fedpft_algo.config import FedPFTConfig
from fedpft_algo.errors import ConfigError
from fedpft_algo.core.privacy import clip_and_noise, epsilon


def _states():
    received = OrderedDict(a=torch.zeros(3), b=torch.ones(2, 2))
    trained = OrderedDict(a=torch.tensor([3.0, 0.0, 0.0]), b=torch.ones(2, 2) + torch.tensor([[4.0, 0], [0, 0]]))
    return received, trained  # update norm = 5


def test_clip_and_noise_clips_the_update_to_the_norm_without_noise():
    received, trained = _states()
    out, norm = clip_and_noise(received, trained, clip_norm=1.0, noise_multiplier=0.0)
    assert norm == pytest.approx(5.0)
    assert torch.allclose(out["a"], torch.tensor([0.6, 0.0, 0.0]))
    assert torch.allclose(out["b"], torch.ones(2, 2) + torch.tensor([[0.8, 0], [0, 0]]))
    assert torch.equal(trained["a"], torch.tensor([3.0, 0.0, 0.0]))  # inputs untouched


def test_clip_and_noise_keeps_small_updates_and_adds_calibrated_noise():
    received = OrderedDict(w=torch.zeros(200_000))
    trained = OrderedDict(w=torch.zeros(200_000))
    out, norm = clip_and_noise(received, trained, clip_norm=0.5, noise_multiplier=2.0,
                               generator=torch.Generator().manual_seed(0))
    assert norm == 0.0
    assert out["w"].std().item() == pytest.approx(1.0, rel=0.01)  # 2.0 * 0.5
    assert abs(out["w"].mean().item()) < 0.01


def test_epsilon_shrinks_with_noise_and_grows_with_rounds():
    assert epsilon(0.0, 0.5, 5, 1e-5) == float("inf")
    low_noise, high_noise = epsilon(0.8, 0.5, 10, 1e-5), epsilon(2.0, 0.5, 10, 1e-5)
    assert high_noise < low_noise
    assert epsilon(2.0, 0.5, 20, 1e-5) > high_noise
    assert epsilon(2.0, 0.1, 10, 1e-5) < high_noise  # sampling amplifies privacy


@pytest.mark.parametrize("kwargs, match", [
    ({"dp_clip_norm": -1.0}, "fedpft_dp_clip_norm=-1.0"),
    ({"dp_noise_multiplier": 1.0}, "fedpft_dp_noise_multiplier=1.0 .*clip_norm > 0"),
    ({"dp_clip_norm": 1.0, "dp_delta": 1.0}, "fedpft_dp_delta=1.0"),
])
def test_dp_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FedPFTConfig(**kwargs)
