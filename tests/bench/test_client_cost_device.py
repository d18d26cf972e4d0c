"""The client-cost probe's device-side numbers, in-process on a 2-layer MiniLM: the device it trained on,
the precision, tokens per second, and no peak device memory on a CPU (None, not a measured 0)."""
import pytest

from fedpft_algo.bench.client_cost import probe

pytestmark = pytest.mark.timeout(300)


def test_probe_reports_device_precision_and_tokens_per_second(minilm_2layer):
    results = {precision: probe(str(minilm_2layer), "sub_model", "rotten_tomatoes", examples=16, batch_size=8,
                                repeats=1, config_values={"retained_layers": [0], "precision": precision})
               for precision in ("fp32", "bf16")}
    for precision, result in results.items():
        assert result["device"] == "cpu" and result["precision"] == precision
        assert result["peak_device_mem_mb"] is None
        assert result["tokens_per_second"] > 0 and result["steps"] == 2
    # the same 16 examples, so the same non-padding tokens per epoch at either precision
    tokens = {p: r["tokens_per_second"] * r["epoch_seconds"] for p, r in results.items()}
    assert tokens["bf16"] == pytest.approx(tokens["fp32"])
    assert 16 * 3 < tokens["fp32"] <= 16 * 64   # at least a special token and one word each; max_length 64
