"""The FM's weights never reach a client: a client process cannot even open them."""
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.process  # each test runs a client in a process of its own


def test_client_guard_blocks_opening_fm_weights_but_not_config(tmp_path):
    model_dir = tmp_path / "fm"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"secret")
    script = textwrap.dedent(f"""
        from fedpft_algo.models import forbid_weight_files
        forbid_weight_files({str(model_dir)!r})
        open({str(model_dir / 'config.json')!r}).read()          # allowed: shapes only
        try:
            open({str(model_dir / 'model.safetensors')!r}, 'rb')
        except PermissionError as exc:
            print('blocked:', exc)
        else:
            print('OPENED')
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("blocked: client processes may not read the foundation model's weights")


def test_client_cannot_load_the_fm_through_transformers_either(tmp_path):
    script = textwrap.dedent("""
        from fedpft_algo.models import forbid_weight_files, load_full_model, load_model_config, resolve_model_dir
        forbid_weight_files(resolve_model_dir("minilm-l6", verify=False))
        load_model_config("minilm-l6", 2, verify=False)   # the client's path: config.json only
        try:
            load_full_model("minilm-l6", 2)
        except Exception as exc:
            print("blocked:", type(exc).__name__)
        else:
            print("LOADED")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("blocked:"), result.stdout


def test_a_decoder_client_builds_its_sub_fm_from_config_alone_and_receives_no_fm_only_tensor(tmp_path):
    """Decoders (instruction task kind): the client's causal-LM sub-FM comes from config.json under the weight
    guard; the server's first payload fits it exactly, carries each compressed layer's FFN at the sub-FM's
    width only (never the FM's), sends the tied output projection once, and the client uploads LoRA only."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from fedpft_algo.config import FedPFTConfig
    from fedpft_algo.methods import get_method
    from fedpft_algo.runtime.payload import full_state

    config = AutoConfig.for_model("llama", vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                                  pad_token_id=0, tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    fm = AutoModelForCausalLM.from_config(config).eval()
    fm.save_pretrained(tmp_path / "fm")
    fedpft = FedPFTConfig(retained_layers=(0,), lora_r=4)
    method = get_method("fedpft")
    sub = method.add_client_lora(method.build_proxy(fm, fedpft, [], []).model, fedpft)
    payload = full_state(sub)

    script = textwrap.dedent(f"""
        import json
        from fedpft_algo.config import FedPFTConfig
        from fedpft_algo.core.lora import trainable_state
        from fedpft_algo.methods import get_method
        from fedpft_algo.models import forbid_weight_files, load_model_config
        from fedpft_algo.tasks import resolve_task_kind
        forbid_weight_files({str(tmp_path / 'fm')!r})
        model_config = load_model_config({str(tmp_path / 'fm')!r}, 2, verify=False)
        kind = resolve_task_kind("auto", model_config)
        model = get_method("fedpft").client_model(model_config, FedPFTConfig(retained_layers=(0,), lora_r=4),
                                                  model_class=kind.model_class(model_config))
        print(json.dumps({{"kind": kind.name, "class": type(model.base_model.model).__name__,
                          "state": {{k: list(v.shape) for k, v in model.state_dict().items()}},
                          "upload": sorted(trainable_state(model))}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    client = json.loads(result.stdout.strip().splitlines()[-1])

    assert (client["kind"], client["class"]) == ("instruction", "LlamaForCausalLM")
    assert {k: list(v.shape) for k, v in payload.items()}.items() <= client["state"].items()
    assert set(client["state"]) - set(payload) == {"base_model.model.lm_head.weight"}  # tied: sent once
    for name, tensor in payload.items():   # layers 1..3 are compressed: 64 -> 16 neurons
        if any(f"layers.{i}.mlp." in name for i in (1, 2, 3)):
            assert 64 not in tensor.shape and 16 in tensor.shape, (name, tuple(tensor.shape))
    assert client["upload"] and all("lora_A" in k or "lora_B" in k for k in client["upload"])
