"""After layer-level alignment: how good a proxy is SmolLM2's sub-FM? Gradient cosine and answer loss against the FM
(instruction loss, 16 rotten_tomatoes test prompts), per (keep ratio, alignment steps, output-term weight[, saliency rule:
weight (default) or activation])."""
import copy, json, sys, time
import torch
from common import BASE, setup, threads
from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.lora import add_lora, plug_in_, trainable_state
from fedpft_algo.core.gradient_error import GradientProbe
from fedpft_algo.methods import get_method
threads(sys.argv[1])
s = setup()
fm, kind, batch = s.fm, s.kind, s.batch
base = dict(BASE, public_size=400)
public_loader, eval_batches = s.public(400)[:2]
method = get_method("fedpft")
results = []
for spec in sys.argv[2:]:
    keep, steps, out_w, saliency = (spec.split(",") + ["weight"])[:4]
    config = FedPFTConfig(**base, ffn_keep_ratio=float(keep), layer_align_steps=int(steps),
                          align_output_weight=float(out_w), saliency=saliency)
    t = time.time()
    proxy = method.build_proxy(fm, config, public_loader, eval_batches, cache_dir=None)
    sub = proxy.model
    full_l, sub_l = add_lora(copy.deepcopy(fm), config), add_lora(sub, config)
    plug_in_(full_l, trainable_state(sub_l))
    full_l.eval(); sub_l.eval()
    row = {"keep": float(keep), "steps": int(steps), "output_weight": float(out_w), "saliency": saliency,
           **GradientProbe(batch, loss_fn=kind.loss).measure(full_l, sub_l, "init")}
    with torch.no_grad():
        row["answer_loss_fm"], row["answer_loss_sub"] = kind.loss(full_l, batch).item(), kind.loss(sub_l, batch).item()
    rep = proxy.report
    row["report"] = {k: v for k, v in vars(rep).items() if isinstance(v, (int, float))} if rep is not None else None
    row["seconds"] = time.time() - t
    print(json.dumps(row), flush=True)
    results.append(row)
    del full_l, sub_l, sub, proxy

