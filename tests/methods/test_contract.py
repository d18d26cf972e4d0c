"""The contract every registered method keeps, on tiny config-built models of every architecture.

The server's proxy (with LoRA) and a client's model built from ``config.json`` alone have the same
tensors; a client trains only LoRA + head; what a client trains plugs into the FM exactly, under the
FM's names, and nothing else of the FM changes; building the proxy leaves the FM untouched.
"""
import copy

import pytest
import torch

from fedpft_algo.config import FedPFTConfig
from fedpft_algo.core.lora import add_lora, is_trainable_name, trainable_state
from fedpft_algo.methods import get_method, known_methods
from fedpft_algo.models import model_class_for
from tests.conftest import TINY_MODEL_TYPES

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.parametrize("server_and_client", known_methods(), indirect=True)]  # every method


def _config(method_name: str) -> FedPFTConfig:
    return FedPFTConfig(method=method_name, lora_r=4, lora_alpha=8, lora_dropout=0.0, layer_align_steps=2,
                        layer_align_batch_size=2)


def _randomise_trainable_(model, seed=5) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if is_trainable_name(name):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))


@pytest.fixture(params=TINY_MODEL_TYPES + ("llama_causal",))
def tiny_model_type(request) -> str:
    """Every architecture of the registry, and the LLaMA decoder as a causal LM (decoder task kinds)."""
    return request.param


@pytest.fixture
def server_and_client(request, tiny_model_type, make_tiny_model, tiny_inputs):
    """(method, config, FM, FM state before, server proxy with LoRA, client model) for one method."""
    method, config = get_method(request.param), _config(request.param)
    fm = make_tiny_model(tiny_model_type)
    before = {k: v.clone() for k, v in fm.state_dict().items()}
    public = [tiny_inputs(fm, seed=seed) for seed in range(3)]
    proxy = method.build_proxy(fm, config, public, public[:1])
    server = method.add_client_lora(proxy.model, config).eval()
    client = method.client_model(copy.deepcopy(fm.config), config,
                                 model_class=model_class_for(fm.config, tiny_model_type == "llama_causal")).eval()
    return method, config, fm, before, server, client


def test_client_model_from_config_has_the_server_proxy_tensors(server_and_client, tiny_inputs):
    _, _, fm, before, server, client = server_and_client

    shapes = {name: tuple(t.shape) for name, t in client.state_dict().items()}

    assert shapes == {name: tuple(t.shape) for name, t in server.state_dict().items()}
    client.load_state_dict(server.state_dict(), strict=True)  # what the first payload does
    with torch.no_grad():
        assert torch.equal(client(**tiny_inputs(fm)).logits, server(**tiny_inputs(fm)).logits)
    assert all(torch.equal(v, before[k]) for k, v in fm.state_dict().items())  # the proxy was built from a copy


def test_client_trains_only_lora_and_head(server_and_client):
    _, _, fm, _, _, client = server_and_client
    causal = type(fm).__name__.endswith("ForCausalLM")   # a decoder's output projection stays frozen: no head

    trained = [name for name, p in client.named_parameters() if p.requires_grad]

    assert trained and all(is_trainable_name(name) for name in trained)
    assert any("lora_A" in name for name in trained)
    assert any(".modules_to_save." in name for name in trained) == (not causal)
    assert not any("lm_head" in name or "embed_tokens" in name for name in trained)


def test_plug_in_round_trips_into_the_fm(server_and_client):
    # Prepare: a client's trained LoRA + head (random), the FM with LoRA on every layer
    method, config, fm, _, server, client = server_and_client
    _randomise_trainable_(client)
    state = trainable_state(client)
    full = add_lora(fm, config)
    before = {k: v.clone() for k, v in full.state_dict().items()}

    # Execute
    method.plug_in_(full, state, server)

    # Assert: the FM holds exactly the plugged tensors under its own names; nothing else changed
    plugged = method.full_model_names(state, server, full)
    after = full.state_dict()
    assert len(plugged) == len(state)
    for name, tensor in plugged.items():
        assert torch.equal(after[name], tensor), name
    assert all(torch.equal(after[k], before[k]) for k in after if k not in plugged)
    assert all(is_trainable_name(k) for k in plugged)
