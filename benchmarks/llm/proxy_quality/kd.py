"""Does distilling the FM's next-token distribution (KL on logits over public text) make SmolLM2's sub-FM a proxy,
where per-layer hidden-state MSE (the paper's layer-level alignment, 60 steps) leaves answer loss ~8.7 and gradient
cosine ~0? Starts from the bench's cached 60-step aligned sub-FM (keep 0.25), trains the compressed layers' FFN."""
import copy, json, os, sys, time
import torch
import torch.nn.functional as F
from common import BASE, setup, threads
from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.lora import add_lora, plug_in_, trainable_state
from fedpft_algo.core.gradient_error import GradientProbe
from fedpft_algo.methods import get_method
threads(sys.argv[1]); total = int(sys.argv[2]); every = int(sys.argv[3])
s = setup()
fm, kind, batch = s.fm, s.kind, s.batch
base = dict(BASE, public_size=400, layer_align_steps=60, ffn_keep_ratio=0.25)
config = FedPFTConfig(**base)
public_loader, eval_batches, public_texts, n_public = s.public(400)
t = time.time()
proxy = get_method("fedpft").build_proxy(fm, config, public_loader, eval_batches, cache_dir=os.environ.get("PROXY_CACHE", "benchmarks/llm/cache/fedpft"),
                                         cache_extra=f"convention_speeches:{n_public}:0")
print("proxy from cache:", proxy.from_cache, round(time.time() - t), flush=True)
sub = proxy.model
layers = config.compressed_layers(len(sub.model.layers))
params = [p for i in layers for p in sub.model.layers[i].mlp.parameters()]
for p in sub.parameters():
    p.requires_grad_(False)
for p in params:
    p.requires_grad_(True)
opt = torch.optim.AdamW(params, lr=6e-4, weight_decay=0.01)

def measure(step):
    full_l, sub_l = add_lora(copy.deepcopy(fm), config), add_lora(copy.deepcopy(sub), config)
    plug_in_(full_l, trainable_state(sub_l)); full_l.eval(); sub_l.eval()
    row = {"kd_steps": step, **GradientProbe(batch, loss_fn=kind.loss).measure(full_l, sub_l, "init")}
    with torch.no_grad():
        row["answer_loss_fm"], row["answer_loss_sub"] = kind.loss(full_l, batch).item(), kind.loss(sub_l, batch).item()
    print(json.dumps(row), flush=True)

if len(sys.argv) > 4 and sys.argv[4] == "chat":   # public sentences in the task's prompt, through the chat template
    tok = s.tokenizer
    texts = [tok.apply_chat_template([{"role": "user", "content": base["prompt_template"].format(
        text=text, choices="negative, positive")}], add_generation_prompt=True, tokenize=False) for text in public_texts]
    tok.padding_side = "right"
    chat = [dict(tok(texts[i:i + 16], padding=True, truncation=True, max_length=160, return_tensors="pt"))
            for i in range(0, len(texts) - 15, 16)]
    public_loader = chat
    print("chat-formatted public prompts:", len(texts), chat[0]["input_ids"].shape, flush=True)
measure(0)
step = 0
sub.train()
while step < total:
    for b in public_loader:
        mask = b["attention_mask"].bool()
        with torch.no_grad():
            t_logits = fm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[mask]
        s_logits = sub(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[mask]
        loss = F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1), log_target=True, reduction="batchmean")
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
        step += 1
        print(f"step {step} kl {loss.item():.3f} {time.time() - t:.0f}s", flush=True)
        if step % every == 0:
            sub.eval(); measure(step); sub.train()
        if step >= total:
            break
