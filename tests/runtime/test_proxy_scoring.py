"""The server scores the plugged-in FM and the proxy every round; FedPETuning's proxy is the FM itself (the same
weights, LoRA and head), so the server scores it once and reports that score for both."""
from types import SimpleNamespace

import pytest
import torch

from fedpft_algo.core.lora import trainable_state
from fedpft_algo.runtime.aggregator import FedPFTAggregator
from tests.conftest import build_tiny_inputs, build_tiny_model
from tests.runtime.test_layer_widths import _settings


@pytest.mark.parametrize("method, scored_per_round", [("fedpetuning", 1), ("fedpft", 2)])
def test_the_fm_is_scored_once_where_the_proxy_is_the_fm(tmp_path, monkeypatch, method, scored_per_round):
    settings = _settings(tmp_path, method=method)
    full_model = build_tiny_model("bert")
    public = [build_tiny_inputs(full_model, batch=4, seed=s) for s in range(10, 14)]
    test = [dict(build_tiny_inputs(full_model, seed=20), labels=torch.tensor([0, 1]))]
    aggregator = FedPFTAggregator(full_model, SimpleNamespace(), settings=settings, public_batches=public,
                                  eval_batches=public[:1], test_data=test)
    aggregator.get_model_params()   # runs the pre-round hook
    scored = []
    evaluate = aggregator.task_kind.evaluate
    monkeypatch.setattr(aggregator.task_kind, "evaluate", lambda model, *a: scored.append(model) or evaluate(model, *a))
    upload = trainable_state(aggregator.sub_model)   # one client sends back what it received
    aggregator.on_before_aggregation([(4, upload)])
    aggregator.on_after_aggregation(aggregator.aggregate([(4, upload)]))
    row = aggregator.history[-1]
    assert len(scored) == scored_per_round and scored[0] is aggregator.model
    if method == "fedpetuning":
        assert row["sub_accuracy"] == row["accuracy"] and row["sub_loss"] == row["loss"]
