"""Mixed precision (``fedpft_precision``) and the device-side cost helpers, on CPU: autocast is on where
it should be and off for fp32, parameters and optimiser state stay fp32, bf16 alignment and evaluation
work, fp16 is refused off CUDA, the fp16 scaler path unscales before clipping; peak device memory is
None (not 0) on a CPU, tokens are the attention mask's ones."""
import pytest
import torch

from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.alignment import align_layers_
from fedpft_algo.core.compression import build_sub_model
from fedpft_algo.core.device_cost import (CPU_CODE, batch_tokens, device_code, device_name, peak_device_mb,
                                          reset_peak)
from fedpft_algo.core.evaluate import evaluate
from fedpft_algo.core.lora import add_lora
from fedpft_algo.core.precision import autocast_for, backward_step, grad_scaler
from fedpft_algo.errors import ConfigError
from tests.conftest import build_tiny_inputs, build_tiny_model


def _linear_output_dtypes(model, run):
    """The dtypes of every nn.Linear output while ``run()`` runs."""
    seen = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype)) for m in model.modules()
             if isinstance(m, torch.nn.Linear)]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_autocast_casts_the_matmuls_not_the_parameters(precision, dtype):
    model = add_lora(build_tiny_model("bert"), FedPFTConfig(lora_r=4, lora_alpha=8))
    inputs = build_tiny_inputs(model)
    with autocast_for("cpu", precision):
        seen = _linear_output_dtypes(model, lambda: model(**inputs))
    assert seen == {dtype}
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_fp16_off_cuda_and_unknown_precisions_are_refused():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        autocast_for("cpu", "fp16")
    with pytest.raises(ValueError, match="precision 'fp8'"):
        autocast_for("cpu", "fp8")
    with pytest.raises(ConfigError, match="fedpft_precision='fp8'"):
        FedPFTConfig(precision="fp8")
    assert grad_scaler("cpu", "fp32") is None and grad_scaler("cpu", "bf16") is None
    assert FedPFTConfig().precision == "fp32"


def test_bf16_training_step_keeps_lora_head_and_adamw_state_fp32():
    model = add_lora(build_tiny_model("bert"), FedPFTConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0)).train()
    inputs = dict(build_tiny_inputs(model), labels=torch.tensor([0, 1]))
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    with autocast_for("cpu", "bf16"):
        loss = model(**inputs).loss
    backward_step(loss, optimizer, grad_scaler("cpu", "bf16"))
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params)
    assert {t.dtype for state in optimizer.state.values() for t in state.values() if t.dim()} == {torch.float32}
    assert any(not torch.equal(p, b) for p, b in zip(params, before))


def test_the_scaler_path_unscales_before_clipping():
    """fp16's path through backward_step, with a CPU GradScaler standing in for CUDA's: the gradients are
    unscaled before clipping (a clip at norm 1 on scaled gradients would leave ~0 step)."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 4))
    plain = torch.nn.Parameter(weight.detach().clone())
    results = []
    for param, scaler in ((weight, torch.amp.GradScaler("cpu", init_scale=2.0**10)), (plain, None)):
        optimizer = torch.optim.SGD([param], lr=0.1)
        loss = (param * 3).pow(2).sum()
        backward_step(loss, optimizer, scaler, [param], max_grad_norm=1.0)
        results.append(param.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-5)


def test_bf16_layer_alignment_and_evaluation_run_and_stay_close_to_fp32():
    full = build_tiny_model("bert")
    config = FedPFTConfig(lora_r=4, lora_alpha=8, ffn_keep_ratio=0.5)
    batches = [build_tiny_inputs(full, seed=s) for s in range(4)]
    reports = {}
    for precision in ("fp32", "bf16"):
        sub, _ = build_sub_model(full, config)
        reports[precision] = align_layers_(full, sub, batches, batches[:2], [1, 2], steps=8, lr=1e-2,
                                           precision=precision)
        assert {p.dtype for p in sub.parameters()} == {torch.float32}
    assert reports["bf16"].mean_after < reports["bf16"].mean_before
    assert reports["bf16"].mean_before == pytest.approx(reports["fp32"].mean_before, rel=0.05)
    labelled = [dict(b, labels=torch.tensor([0, 1])) for b in batches]
    fp32, bf16 = evaluate(full, labelled, "cpu"), evaluate(full, labelled, "cpu", "bf16")
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05) and bf16["test_total"] == 8


def test_device_cost_helpers_on_cpu():
    reset_peak("cpu")   # nothing to reset, no error
    assert peak_device_mb("cpu") is None
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert batch_tokens({"input_ids": torch.ones(2, 4), "attention_mask": mask}) == 5
    assert batch_tokens({"input_ids": torch.ones(2, 4)}) == 8
    assert batch_tokens({"pixel_values": torch.ones(2, 3, 8, 8)}) is None
    assert device_code("cpu") == CPU_CODE and device_name(CPU_CODE) == "cpu"
    assert device_code("cuda:3") == 3 and device_name(3) == "cuda:3" and device_code(torch.device("cuda", 1)) == 1
