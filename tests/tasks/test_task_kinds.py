"""Task kinds (fedpft_algo.tasks) on a tiny config-built LLaMA decoder and a one-token-per-character tokenizer:
resolution against the model, instruction encoding, the lm-eval multiple-choice evaluation, language
modelling, LoRA on a decoder (no head), the sub-FM of a decoder."""
import math

import numpy as np
import pytest
import torch

from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core import causal_lm
from fedpft_algo.core.arch import is_decoder
from fedpft_algo.core.lora import add_lora, trainable_state
from fedpft_algo.data.base import TaskData
from fedpft_algo.data.instruction import IGNORE_INDEX, CausalCollator, encode_instructions, render_prompt
from fedpft_algo.errors import ConfigError, DataError
from fedpft_algo.tasks import get_task_kind, resolve_task_kind
from tests.helpers import tiny_causal_lm

VOCAB = 100


class CharTokenizer:
    """One token per character (ids 3..), no chat template (prompts end with a newline); batches too."""
    chat_template = None
    pad_token_id, eos_token_id = 0, 2

    def _one(self, text):
        return [3 + (ord(c) % (VOCAB - 3)) for c in text]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self._one(t) for t in text] if isinstance(text, list) else self._one(text)}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 3 + 32) for i in ids)


@pytest.fixture
def decoder():
    return tiny_causal_lm(VOCAB, num_layers=4, max_positions=128)


def _task():
    texts = ["good film", "bad film", "great", "awful", "fine", "dull"]
    return TaskData("toy", "text", texts, np.array([1, 0, 1, 0, 1, 0]), texts[:4], np.array([1, 0, 1, 0]),
                    ["no", "yes"])


# ---------------------------------------------------------------------- resolution
def test_auto_resolves_by_the_model_and_a_mismatch_is_a_config_error(decoder, make_tiny_model):
    bert = make_tiny_model("bert").config
    assert is_decoder(decoder.config) and not is_decoder(bert)
    assert resolve_task_kind("auto", decoder.config).name == "instruction"
    assert resolve_task_kind("auto", bert).name == "classification"
    assert resolve_task_kind("language_modeling", decoder.config).name == "language_modeling"
    with pytest.raises(ConfigError, match=r"fedpft_task_kind='classification' is not allowed: model type llama is a "
                                          r"decoder \(causal LM\); expected auto or one of instruction, language_modeling"):
        resolve_task_kind("classification", decoder.config)
    with pytest.raises(ConfigError, match=r"fedpft_task_kind='instruction' is not allowed: model type bert is not a "
                                          r"decoder"):
        resolve_task_kind("instruction", bert)


def test_a_config_that_names_a_causal_lm_architecture_is_a_decoder(make_tiny_model):
    config = make_tiny_model("bert").config
    config.architectures = ["GPT2ForCausalLM"]
    assert is_decoder(config)


# ---------------------------------------------------------------------- instruction encoding
def test_instruction_labels_cover_the_answer_and_eos_only():
    tokenizer = CharTokenizer()
    template = "{text}? ({choices})"
    features = encode_instructions(tokenizer, ["ab", ("c", "d")], [1, 0], template, ["no", "yes"], 32)

    prompt = tokenizer(render_prompt(template, "ab", ["no", "yes"]) + "\n")["input_ids"]
    assert render_prompt(template, ("c", "d"), ["no", "yes"]) == "c\nd? (no, yes)"
    assert features[0]["input_ids"].tolist() == prompt + tokenizer("yes")["input_ids"] + [2]
    assert features[0]["labels"].tolist() == [IGNORE_INDEX] * len(prompt) + tokenizer("yes")["input_ids"] + [2]
    assert features[1]["labels"].tolist()[-3:] == tokenizer("no")["input_ids"] + [2]


def test_instruction_too_long_and_empty_answers_are_one_line_errors():
    with pytest.raises(DataError, match=r"task example 1: prompt \+ answer are 22 tokens, more than "
                                        r"fedpft_max_length=20"):
        encode_instructions(CharTokenizer(), ["ab", "abcdefgh"], [0, 0], "{text} ({choices})", ["no", "yes"], 20)
    with pytest.raises(DataError, match=r"label answer '' tokenises to nothing"):
        encode_instructions(CharTokenizer(), ["ab"], [0], "{text}", ["", "yes"], 20)


def test_causal_collator_pads_labels_with_ignore_index():
    batch = CausalCollator(0)([{"input_ids": np.array([5, 6, 7]), "attention_mask": np.ones(3), "labels":
                                np.array([-100, 6, 7])}, {"input_ids": np.array([8]), "attention_mask": np.ones(1),
                                                          "labels": np.array([8])}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


# ---------------------------------------------------------------------- evaluation
def test_multiple_choice_of_a_uniform_model_prefers_the_shorter_answer_by_log_v_per_token(decoder):
    """Hand-computed: uniform outputs give every token log(1/V), so a k-token answer scores -k log V."""
    with torch.no_grad():
        decoder.get_output_embeddings().weight.zero_()
    scores = causal_lm.choice_scores(decoder, [[5, 6, 7], [9]], [[10, 11, 12], [13]], pad_id=0)
    expected = torch.tensor([[-3 * math.log(VOCAB), -math.log(VOCAB)]] * 2, dtype=torch.float64)
    assert torch.allclose(scores, expected, atol=1e-5)


def test_choice_scores_equal_the_single_prompt_scorer(decoder):
    tokenizer = CharTokenizer()
    choices = ["yes", "no", "maybe"]
    contexts = [tokenizer(p + "\n")["input_ids"] for p in ("is it good?", "and this one, is it?")]
    batched = causal_lm.choice_scores(decoder, contexts, [tokenizer(c)["input_ids"] for c in choices], 0, 1)
    for row, prompt in enumerate(("is it good?", "and this one, is it?")):
        single = causal_lm.choice_logprobs(decoder, tokenizer, prompt, choices)
        assert torch.allclose(batched[row].float(), single, atol=1e-5)


def test_instruction_kind_evaluates_accuracy_from_the_scores_and_samples_a_greedy_answer(decoder):
    kind, config = get_task_kind("instruction"), FedPFTConfig(max_length=64)
    tokenizer, task = CharTokenizer(), _task()
    eval_set = kind.eval_set(tokenizer, task, config, batch_size=3)
    metrics = kind.evaluate(decoder, eval_set)

    scores = causal_lm.choice_scores(decoder, eval_set.contexts, eval_set.choices, 0)
    pred = scores.argmax(-1)
    assert metrics["accuracy"] == (pred == torch.tensor([1, 0, 1, 0])).float().mean().item()
    assert metrics["test_total"] == 4 and 0.0 <= metrics["macro_f1"] <= 1.0
    assert metrics["loss"] == pytest.approx(-scores[torch.arange(4), torch.tensor([1, 0, 1, 0])].mean().item())
    sample = kind.sample(decoder, eval_set)
    assert sample["prompt"] == render_prompt(config.prompt_template, "good film", ["no", "yes"])
    assert sample["gold"] == "yes" and isinstance(sample["answer"], str)


def test_language_modelling_of_a_uniform_model_has_perplexity_v(decoder):
    kind, tokenizer = get_task_kind("language_modeling"), CharTokenizer()
    with torch.no_grad():
        decoder.get_output_embeddings().weight.zero_()
    metrics = kind.evaluate(decoder, kind.eval_set(tokenizer, _task(), FedPFTConfig(), batch_size=2))
    assert metrics["perplexity"] == pytest.approx(VOCAB, rel=1e-5)
    # every token of every text (and its eos) after the first is predicted once
    assert metrics["test_total"] == sum(len(t) for t in _task().test_inputs)


def test_instruction_loss_trains_lora_only_and_drops(decoder):
    kind, tokenizer = get_task_kind("instruction"), CharTokenizer()
    model = add_lora(decoder, FedPFTConfig(lora_r=4))
    features, labels = kind.features(tokenizer, _task(), FedPFTConfig(max_length=64), "train")
    batch = kind.collator(tokenizer)(features)
    assert labels is None
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(5):
        loss = kind.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------- LoRA and the sub-FM on a decoder
def test_decoder_lora_covers_qkvo_with_gqa_shapes_and_never_the_output_projection(decoder):
    state = trainable_state(add_lora(decoder, FedPFTConfig(lora_r=4)))
    assert all("lora_A" in k or "lora_B" in k for k in state)
    assert not any("lm_head" in k or "embed_tokens" in k or "modules_to_save" in k for k in state)
    for projection, out in (("q_proj", 32), ("k_proj", 16), ("v_proj", 16), ("o_proj", 32)):
        names = [k for k in state if f"{projection}.lora_B" in k]
        assert len(names) == 4 and all(tuple(state[k].shape) == (out, 4) for k in names)


def test_a_decoder_sub_fm_that_keeps_every_neuron_has_identical_causal_lm_logits(decoder):
    from fedpft_algo.core.compression import build_sub_model

    with torch.no_grad():
        for p in decoder.parameters():
            p.normal_(0.0, 0.1)
    sub, _ = build_sub_model(decoder, FedPFTConfig(ffn_keep_ratio=1.0, retained_layers=(0,)))
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        assert torch.equal(sub(input_ids=ids, attention_mask=mask).logits,
                           decoder(input_ids=ids, attention_mask=mask).logits)
    assert type(sub).__name__ == "LlamaForCausalLM"
