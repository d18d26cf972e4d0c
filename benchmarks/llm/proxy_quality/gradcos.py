"""Gradient cosine of the SmolLM2 sub-FM against the FM (instruction loss, rotten_tomatoes probe batch), per keep ratio,
before any alignment: is the decoder proxy's ~0 cosine in the bench a pipeline error (keep 1.0 must give 1.0) or the proxy?"""
import copy, json, sys, time
import torch
from common import BASE, setup, threads
from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.compression import build_sub_model
from fedpft_algo.core.lora import add_lora, plug_in_, trainable_state, is_trainable_name
from fedpft_algo.core.gradient_error import GradientProbe
from fedpft_algo.data.public import _convention_speeches
threads()
s = setup()
fm, kind, batch, tok, base = s.fm, s.kind, s.batch, s.tokenizer, BASE
print({k: tuple(v.shape) for k, v in batch.items()}, flush=True)
sentences = _convention_speeches()[:128]
public = [dict(tok(sentences[i:i + 16], padding=True, truncation=True, max_length=64, return_tensors="pt"))
          for i in range(0, 128, 16)]
saliency = sys.argv[1]
out = {}
for ratio in [float(r) for r in sys.argv[2:]]:
    t = time.time()
    config = FedPFTConfig(ffn_keep_ratio=ratio, saliency=saliency, **base)
    sub, _ = build_sub_model(fm, config, public)
    full_l, sub_l = add_lora(copy.deepcopy(fm), config), add_lora(sub, config)
    plug_in_(full_l, trainable_state(sub_l))
    init = GradientProbe(batch, loss_fn=kind.loss).measure(full_l, sub_l, "init")   # LoRA B = 0, as in the runs
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in sub_l.named_parameters():
            if is_trainable_name(n) and "lora_B" in n:
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
    plug_in_(full_l, trainable_state(sub_l))
    trained = GradientProbe(batch, loss_fn=kind.loss).measure(full_l, sub_l, "lora")
    with torch.no_grad():
        lf, ls = kind.loss(full_l, batch).item(), kind.loss(sub_l, batch).item()
    out[ratio] = {**init, **trained, "loss_fm": lf, "loss_sub": ls, "seconds": time.time() - t}
    print(ratio, out[ratio], flush=True)
    del full_l, sub_l, sub
json.dump(out, sys.stdout, indent=1)
