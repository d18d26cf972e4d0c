"""``python -m fedpft_algo.bench.llm_cost``: the two losses it times agree, and every variant is measured."""
import pytest

from fedpft_algo.bench import llm_cost


@pytest.mark.timeout(900)
def test_llm_cost_times_four_variants_whose_losses_agree(tiny_decoder_dir, one_torch_thread):
    blocks = []
    result = llm_cost.measure(str(tiny_decoder_dir), batch_size=2, max_length=160, steps=1, repeats=2,
                              retained_layers=(0,), on_block=blocks.append)

    assert [b["repeats"] for b in blocks] == [1, 2] and result["repeats"] == 2
    assert set(result["variants"]) == {"fm/full", "fm/answer", "sub_fm/full", "sub_fm/answer"}
    assert all(len(v["seconds_per_step_all"]) == 2 and v["seconds_per_step_median"] > 0
               for v in result["variants"].values())
    assert max(result["loss_difference_full_vs_answer"].values()) < 1e-4   # the same loss, computed two ways
    assert result["parameters"]["sub_fm"] < result["parameters"]["fm"]
    assert result["answer_tokens_per_example_mean"] == 2   # "negative"/"positive" + end of sequence
    assert "Saving of `answer` over `full`" in llm_cost.markdown(result, "python -m fedpft_algo.bench.llm_cost")
