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
