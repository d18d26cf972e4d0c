"""Which FFN neurons can SmolLM2 lose? The paper's weight saliency against activation saliency (Wanda's rule on whole
neurons, `fedpft_saliency: activation`, calibrated on the server's public text) and a random cut, by keep ratio
(layers 0 and 29 whole, no alignment): LM loss on held-out public text and answer loss on the probe prompts.
First, per layer, the neurons with the largest activation on public text and where weight saliency ranks them
(quantile 0 = cut first). -> saliency_rules.txt"""
import sys

import torch

from common import BASE, setup, threads
from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.arch import arch_of
from fedpft_algo.core.compression import build_sub_model, neuron_saliency, slice_ffn_
from fedpft_algo.core.saliency import CALIBRATION_BATCHES

threads()
s = setup()
fm = s.fm
loader, held_out = s.public()[:2]
calibration = [b for _, b in zip(range(CALIBRATION_BATCHES), loader)]
held_out = held_out[:2]
layers = list(range(fm.config.num_hidden_layers))


@torch.no_grad()
def lm_loss(model):
    total = 0.0
    for b in held_out:
        labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        total += model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels).loss.item()
    return total / len(held_out)


@torch.no_grad()
def answer_loss(model):
    return s.kind.loss(model, s.batch).item()


peak = {}   # per layer: each FFN neuron's largest |activation| (the input of down_proj) over the calibration batches


def record_peak(index):
    def hook(_module, inputs):
        current = inputs[0].detach().abs().flatten(0, 1).amax(0)
        peak[index] = torch.maximum(peak[index], current) if index in peak else current
    return hook


hooks = [fm.model.layers[i].mlp.down_proj.register_forward_pre_hook(record_peak(i)) for i in layers]
with torch.no_grad():
    for b in calibration:
        fm(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
for h in hooks:
    h.remove()
weight = {i: neuron_saliency(l.mlp.up_proj.weight, l.mlp.down_proj.weight, l.mlp.gate_proj.weight)
          for i, l in enumerate(fm.model.layers)}
print("layer: the 3 largest |activations| on public text (neuron: value, weight-saliency quantile)")
for i in layers:
    quantile = weight[i].argsort().argsort().float() / (weight[i].numel() - 1)
    top = peak[i].topk(3)
    print(f"  {i:2d}: " + ", ".join(f"{n}: {v:.0f} q{quantile[n]:.2f}" for v, n in zip(top.values.tolist(), top.indices.tolist())))
print(f"FM: lm loss {lm_loss(fm):.3f}, answer loss {answer_loss(fm):.3f}", flush=True)
spec = arch_of(fm)
for keep in [float(k) for k in sys.argv[1:]] or [0.97, 0.9, 0.75, 0.5, 0.25]:
    row = {}
    for rule in ("weight", "activation"):
        sub, _ = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=keep, saliency=rule, **BASE), calibration)
        row[rule] = (lm_loss(sub.eval()), answer_loss(sub))
        del sub
    sub = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=1.0, **BASE))[0].eval()
    generator = torch.Generator().manual_seed(0)
    for i in range(1, len(layers) - 1):
        width = fm.config.intermediate_size
        slice_ffn_(sub.model.layers[i], spec, torch.randperm(width, generator=generator)[:round(keep * width)].sort().values)
    row["random"] = (lm_loss(sub), answer_loss(sub))
    print(f"keep {keep}: " + "; ".join(f"{r} lm {lm:.3f} answer {a:.3f}" for r, (lm, a) in row.items()), flush=True)
