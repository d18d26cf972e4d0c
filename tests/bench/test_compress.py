"""``fedpft compress``: build and layer-align a sub-FM of a real (2-layer) MiniLM, report sizes and losses."""
import json

from fedpft_algo import cli


def test_compress_reports_sizes_flops_and_a_falling_layer_loss(minilm_2layer, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "report"

    code = cli.main(["compress", "--model", str(minilm_2layer), "--set", "fedpft_retained_layers=[0]",
                     "fedpft_layer_align_steps=20", "fedpft_public_size=120", "fedpft_max_length=32",
                     "--out", str(out)])

    printed = capsys.readouterr().out
    result = json.loads((out / "compress_report.json").read_text())
    assert code == 0 and "layer  loss before  loss after" in printed
    assert result["kept_neurons"] == {"1": 384}  # layer 0 whole, layer 1 cut to 25 % of 1536
    assert result["parameters"]["sub_model"] < result["parameters"]["full_model"]
    assert 0 < result["flops_per_token_ratio"] < 1 and result["alignment_steps"] == 20
    assert result["layer_loss_after"]["1"] < result["layer_loss_before"]["1"]
