"""After layer-level alignment: how good a proxy is SmolLM2's sub-FM? Gradient cosine and answer loss against the FM
(instruction loss, 16 rotten_tomatoes test prompts), per (keep ratio, alignment steps, output-term weight)."""
import copy, dataclasses, json, sys, time
import torch
import fedpft_algo  # noqa
from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.lora import add_lora, plug_in_, trainable_state
from fedpft_algo.core.gradient_error import GradientProbe
from fedpft_algo.data.tasks import load_task
from fedpft_algo.data.public import load_public
from fedpft_algo.data.loaders import encode_inputs, make_collator, make_loader
from fedpft_algo.methods import get_method
from fedpft_algo.models import load_full_model, load_encoder
from fedpft_algo.tasks import get_task_kind
torch.set_num_threads(int(sys.argv[1]))
task = load_task("rotten_tomatoes")
fm = load_full_model("smollm2-135m", 2, causal_lm=True).eval()
base = dict(prompt_template="Review: {text}\nIs this movie review positive or negative? Answer with one of: {choices}.",
            label_answers=["negative", "positive"], task_kind="instruction", retained_layers=[0, -1], lora_r=8,
            max_length=160, public_size=400)
kind = get_task_kind("instruction")
encoder = load_encoder("smollm2-135m", fm.config)
small = dataclasses.replace(task, test_inputs=task.test_inputs[:16], test_labels=task.test_labels[:16])
batch = kind.probe_batch(kind.eval_set(encoder, small, FedPFTConfig(**base), 16))
config0 = FedPFTConfig(**base)
collator = make_collator(encoder)
public = load_public(None, task=task, max_examples=400, seed=0)
features = encode_inputs(encoder, public, 160, None)
n_eval = min(len(features) // 5, 4 * config0.layer_align_batch_size)
eval_batches = list(make_loader(features, indices=range(n_eval), collator=collator, batch_size=16))
torch.manual_seed(0)
public_loader = make_loader(features, indices=range(n_eval, len(features)), collator=collator, batch_size=16, shuffle=True, seed=0)
method = get_method("fedpft")
results = []
for spec in sys.argv[2:]:
    keep, steps, out_w = spec.split(",")
    config = FedPFTConfig(**base, ffn_keep_ratio=float(keep), layer_align_steps=int(steps), align_output_weight=float(out_w))
    t = time.time()
    proxy = method.build_proxy(fm, config, public_loader, eval_batches, cache_dir=None)
    sub = proxy.model
    full_l, sub_l = add_lora(copy.deepcopy(fm), config), add_lora(sub, config)
    plug_in_(full_l, trainable_state(sub_l))
    full_l.eval(); sub_l.eval()
    row = {"keep": float(keep), "steps": int(steps), "output_weight": float(out_w),
           **GradientProbe(batch, loss_fn=kind.loss).measure(full_l, sub_l, "init")}
    with torch.no_grad():
        row["answer_loss_fm"], row["answer_loss_sub"] = kind.loss(full_l, batch).item(), kind.loss(sub_l, batch).item()
    rep = proxy.report
    row["report"] = {k: v for k, v in vars(rep).items() if isinstance(v, (int, float))} if rep is not None else None
    row["seconds"] = time.time() - t
    print(json.dumps(row), flush=True)
    results.append(row)
    del full_l, sub_l, sub, proxy

