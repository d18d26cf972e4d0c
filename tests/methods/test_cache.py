"""The aligned sub-FM / FedOT emulator cache when several runs share it (bench cells side by side)."""
import threading
import time

import torch
from torch import nn

from fedpft_algo.core.alignment import AlignmentReport
from fedpft_algo.methods.cache import load_or_align


def _aligner(calls, value):
    def align():
        calls.append(threading.current_thread().name)
        time.sleep(0.5)  # long enough for the other caller to arrive while this one holds the entry
        with torch.no_grad():
            model.weight.fill_(value)
        return AlignmentReport("layer", 1, 0.5, {0: 1.0}, {0: 0.5}, ["weight"])

    model = nn.Linear(3, 2)
    return model, align


def test_concurrent_callers_align_once_and_the_others_load_the_entry(tmp_path):
    # Prepare: two "runs" with their own model, the same cache entry
    path = tmp_path / "sub_models" / "key.safetensors"
    calls, results = [], {}
    models = {name: _aligner(calls, value) for name, value in (("a", 1.0), ("b", 2.0))}

    def run(name):
        model, align = models[name]
        results[name] = load_or_align(model, path, align, "test alignment")

    # Execute: both at once
    threads = [threading.Thread(target=run, args=(name,), name=name) for name in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Assert: one aligned and cached, the other waited and loaded exactly those tensors
    assert len(calls) == 1
    aligner, loader = calls[0], "b" if calls[0] == "a" else "a"
    assert results[aligner][1] is False and results[aligner][0].changed == ["weight"]
    assert results[loader] == (None, True)
    assert torch.equal(models[loader][0].weight, models[aligner][0].weight)
    assert not torch.equal(models[loader][0].bias, models[aligner][0].bias)  # only changed tensors are cached
    assert sorted(p.name for p in path.parent.iterdir()) == ["key.safetensors", "key.safetensors.lock"]


def test_without_a_cache_directory_every_call_aligns(tmp_path):
    calls = []
    model, align = _aligner(calls, 1.0)
    assert load_or_align(model, None, align, "test alignment")[1] is False
    assert load_or_align(model, None, align, "test alignment")[1] is False
    assert len(calls) == 2


def test_the_precision_keys_its_own_aligned_sub_fm_and_fp32_keeps_the_old_key():
    """A bf16 alignment is another sub-FM (its own cache entry); fp32's key is the one written before
    fedpft_precision existed (computed here without the field)."""
    import hashlib
    import json

    from fedpft_algo.config import FedPFTConfig
    from fedpft_algo.methods.cache import _KEY_FIELDS, cache_key, weights_fingerprint
    from tests.conftest import build_tiny_model

    model, config = build_tiny_model("bert"), FedPFTConfig()
    settings = {name: getattr(config, name) for name in _KEY_FIELDS}
    before = hashlib.sha256(json.dumps([weights_fingerprint(model), settings, "x"], sort_keys=True,
                                       default=list).encode()).hexdigest()[:24]
    assert cache_key(model, config, "x") == before
    keys = {p: cache_key(model, FedPFTConfig(precision=p), "x") for p in ("fp32", "bf16", "fp16")}
    assert len(set(keys.values())) == 3


def test_the_sub_fm_options_join_the_cache_key_only_when_set(make_tiny_model):
    from fedpft_algo.config import FedPFTConfig
    from fedpft_algo.methods.cache import cache_key

    fm = make_tiny_model("bert")
    default = cache_key(fm, FedPFTConfig())
    variants = [FedPFTConfig(saliency="activation"), FedPFTConfig(layer_keep="sensitivity"),
                FedPFTConfig(align_output_weight=0.5)]
    keys = {cache_key(fm, config) for config in variants}

    assert len(keys) == 3 and default not in keys
    # the client-only options do not change the aligned sub-FM, so they share its entry
    assert cache_key(fm, FedPFTConfig(client_backbone_dropout=True, shared_lora_dropout=False)) == default
