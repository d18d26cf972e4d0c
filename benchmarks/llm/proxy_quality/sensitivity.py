"""How fragile is SmolLM2-135M to FFN neuron cuts? The sub-FM at keep 0.9 against the FM with the same neurons zeroed
(they must agree: the cut is exact), then the LM loss of one sentence with the cut in one layer only, in a third of
the layers, in all of them, and at keep 0.97 / 0.95 (weight saliency, layers 0 and 29 whole). -> sensitivity.txt"""
import torch, fedpft_algo  # noqa
from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.compression import build_sub_model
from fedpft_algo.models import load_full_model, load_tokenizer
torch.set_num_threads(2)
fm = load_full_model("smollm2-135m", 2, causal_lm=True).eval()
tok = load_tokenizer("smollm2-135m")
config = FedPFTConfig(ffn_keep_ratio=0.9, retained_layers=[0, -1], task_kind="instruction")
sub, keep = build_sub_model(fm, config)
sub.eval()
print(type(keep), list(keep.items())[:1] if hasattr(keep, "items") else keep)
batch = tok(["The capital of France is", "I really enjoyed this movie because"], return_tensors="pt", padding=True)
masked = __import__("copy").deepcopy(fm)
with torch.no_grad():
    for l, idx in keep.items():
        mlp = masked.model.layers[l].mlp
        drop = torch.ones(mlp.down_proj.weight.shape[1], dtype=torch.bool); drop[idx] = False
        mlp.down_proj.weight[:, drop] = 0
    a = fm(**batch).logits; b = sub(**batch).logits; c = masked(**batch).logits
print("fm vs sub", (a - b).abs().max().item(), "masked vs sub", (c - b).abs().max().item(), "fm vs masked", (a - c).abs().max().item())
print("sub layer1 mlp", sub.model.layers[1].mlp.gate_proj.weight.shape, sub.model.layers[1].mlp.down_proj.weight.shape, sub.config.intermediate_size)
print("sub cfg", {k: getattr(sub.config, k, None) for k in ("hidden_act", "rms_norm_eps", "rope_theta", "tie_word_embeddings", "torch_dtype", "intermediate_size")})
print("fm cfg", {k: getattr(fm.config, k, None) for k in ("hidden_act", "rms_norm_eps", "rope_theta", "tie_word_embeddings", "torch_dtype", "intermediate_size")})
print("rope", getattr(fm.config, "rope_scaling", None), getattr(sub.config, "rope_scaling", None), getattr(fm.config,"rope_parameters",None), getattr(sub.config,"rope_parameters",None))
print("lm_head tied", sub.lm_head.weight.data_ptr() == sub.model.embed_tokens.weight.data_ptr(), torch.equal(sub.lm_head.weight, fm.lm_head.weight))
print("per-layer: mask only this layer's dropped 10 %")
ids = tok(["I really enjoyed this movie because the acting was wonderful and the story kept me guessing until the end."], return_tensors="pt")
with torch.no_grad():
    base_loss = fm(**ids, labels=ids["input_ids"]).loss.item()
    print("fm lm loss", round(base_loss, 3))
    for l, idx in keep.items():
        m = __import__("copy").deepcopy(fm.model.layers[l].mlp.down_proj.weight)
        mlp = fm.model.layers[l].mlp
        drop = torch.ones(mlp.down_proj.weight.shape[1], dtype=torch.bool); drop[idx] = False
        mlp.down_proj.weight[:, drop] = 0
        loss = fm(**ids, labels=ids["input_ids"]).loss.item()
        mlp.down_proj.weight.copy_(m)
        if loss > base_loss + 0.3:
            print("layer", l, "lm loss", round(loss, 3), "dropped", drop.nonzero().flatten()[:10].tolist())
    print("done")
with torch.no_grad():
    print("all layers masked (sub-FM) lm loss", round(sub(**ids, labels=ids["input_ids"]).loss.item(), 3))
    for k in (0.97, 0.95):
        s2, _ = build_sub_model(fm, FedPFTConfig(ffn_keep_ratio=k, retained_layers=[0, -1], task_kind="instruction"))
        print("keep", k, "lm loss", round(s2.eval()(**ids, labels=ids["input_ids"]).loss.item(), 3))
    for lo, hi in ((1, 10), (10, 20), (20, 29)):
        m2 = __import__("copy").deepcopy(fm)
        for l, idx in keep.items():
            if lo <= l < hi:
                mlp = m2.model.layers[l].mlp
                drop = torch.ones(mlp.down_proj.weight.shape[1], dtype=torch.bool); drop[idx] = False
                mlp.down_proj.weight[:, drop] = 0
        print("layers", lo, hi, "masked: lm loss", round(m2(**ids, labels=ids["input_ids"]).loss.item(), 3))
