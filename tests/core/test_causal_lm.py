"""Decoder pieces on a tiny config-built LLaMA: answer-only loss, lm-eval multiple-choice scores, perplexity."""
import math

import pytest
import torch

from fedpft_algo.core import causal_lm
from fedpft_algo.core.causal_lm import IGNORE_INDEX
from fedpft_algo.errors import DataError
from tests.helpers import tiny_causal_lm

VOCAB = 100


@pytest.fixture
def tiny_llama():
    return tiny_causal_lm(VOCAB, num_layers=2, max_positions=64)


class CharTokenizer:
    """One token per character (ids 3..), no chat template: prompts get a newline (the fallback)."""
    chat_template = None
    pad_token_id, eos_token_id = 0, 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (ord(c) % (VOCAB - 3)) for c in text]}


def _batch():
    examples = [causal_lm.encode_instruction(CharTokenizer(), "is it good?", "yes", 32),
                causal_lm.encode_instruction(CharTokenizer(), "and this?", "no", 32)]
    return causal_lm.pad_batch(examples, pad_id=0)


def test_encode_instruction_labels_cover_the_answer_and_eos_only():
    tokenizer = CharTokenizer()
    example = causal_lm.encode_instruction(tokenizer, "ab", "cd", 16)

    prompt, answer = tokenizer("ab\n")["input_ids"], tokenizer("cd")["input_ids"]
    assert example["input_ids"] == prompt + answer + [tokenizer.eos_token_id]
    assert example["labels"] == [IGNORE_INDEX] * 3 + answer + [tokenizer.eos_token_id]


@pytest.mark.parametrize("answer, max_length, message", [
    ("", 16, r"answer '' tokenises to nothing"),
    ("cd", 5, r"prompt \+ answer are 6 tokens, more than fedpft_max_length=5"),
])
def test_encode_instruction_rejects_empty_answers_and_prompts_too_long(answer, max_length, message):
    with pytest.raises(DataError, match=message):
        causal_lm.encode_instruction(CharTokenizer(), "ab", answer, max_length)


def test_answer_loss_equals_the_full_vocabulary_loss_of_transformers(tiny_llama):
    batch = _batch()

    ours = causal_lm.answer_loss(tiny_llama, batch)
    reference = tiny_llama(**batch).loss  # logits at every position, labels shifted inside

    assert torch.allclose(ours, reference, atol=1e-6)


def test_answer_loss_reaches_through_a_peft_wrapper_and_trains_lora(tiny_llama):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    causal_lm.answer_loss(model, _batch()).backward()

    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n for n in grads)
    # LoRA B starts at zero, so the first step's signal is in B's gradient
    assert all(grads[n].abs().sum() > 0 for n in grads if "lora_B" in n)


def test_choice_logprobs_sum_each_candidates_token_logprobs(tiny_llama):
    tokenizer = CharTokenizer()
    choices = ["yes", "no", "maybe"]

    scores = causal_lm.choice_logprobs(tiny_llama, tokenizer, "is it good?", choices)

    context = tokenizer("is it good?\n")["input_ids"]
    for score, choice in zip(scores, choices):
        answer = tokenizer(choice)["input_ids"]
        ids = torch.tensor([context + answer])
        with torch.no_grad():
            logprobs = torch.log_softmax(tiny_llama(input_ids=ids).logits[0], dim=-1)
        expected = sum(logprobs[len(context) - 1 + i, token].item() for i, token in enumerate(answer))
        assert score.item() == pytest.approx(expected, abs=1e-5)
    assert causal_lm.score_choices(tiny_llama, tokenizer, ["is it good?"], choices) == [int(scores.argmax())]


def test_perplexity_of_a_model_with_uniform_outputs_is_the_vocabulary_size(tiny_llama):
    with torch.no_grad():
        tiny_llama.get_output_embeddings().weight.zero_()
    batch = causal_lm.pad_batch([{"input_ids": [5, 6, 7, 8]}, {"input_ids": [9, 10]}], pad_id=0)

    assert causal_lm.perplexity(tiny_llama, [batch]) == pytest.approx(VOCAB, rel=1e-5)


def test_perplexity_counts_only_real_tokens(tiny_llama):
    padded = causal_lm.pad_batch([{"input_ids": [5, 6, 7, 8]}, {"input_ids": [9, 10]}], pad_id=0)
    alone = [causal_lm.pad_batch([{"input_ids": [5, 6, 7, 8]}], 0), causal_lm.pad_batch([{"input_ids": [9, 10]}], 0)]

    assert causal_lm.perplexity(tiny_llama, [padded]) == pytest.approx(causal_lm.perplexity(tiny_llama, alone), rel=1e-5)
    assert math.isfinite(causal_lm.perplexity(tiny_llama, [padded]))
