"""The server <-> client payload: size, prefixed side channels, control scalars, strict loading."""
from collections import OrderedDict

import pytest
import torch

from fedpft_algo.runtime.payload import (COLLECT_STATS, CONTROL_PREFIX, ROUND, control, load_payload_, nbytes,
                                         split_prefixed)


def test_nbytes_counts_the_tensor_data_of_every_dtype():
    tensors = {"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.float16), "c": torch.tensor([7])}

    assert nbytes(tensors) == 3 * 4 * 4 + 5 * 2 + 8
    assert nbytes({}) == 0


def test_split_prefixed_strips_the_prefix_and_keeps_the_order():
    upload = OrderedDict([("x.lora_A", torch.ones(1)), ("p.b", torch.ones(2)), ("y.head", torch.ones(3)),
                          ("p.a", torch.ones(4))])

    rest, picked = split_prefixed(upload, "p.")

    assert list(rest) == ["x.lora_A", "y.head"] and list(picked) == ["b", "a"]
    assert picked["a"] is upload["p.a"]  # no copies
    assert split_prefixed(upload, "none.") == (upload, OrderedDict())


@pytest.mark.parametrize("round_idx, collect", [(0, True), (12, False)])
def test_control_scalars_round_trip_through_the_prefix(round_idx, collect):
    payload = OrderedDict(w=torch.zeros(2))
    payload.update(control(round_idx, collect))

    tensors, controls = split_prefixed(payload, CONTROL_PREFIX)

    assert list(control(round_idx, collect)) == [ROUND, COLLECT_STATS]
    assert list(tensors) == ["w"]
    assert int(controls["round"].item()) == round_idx and bool(controls["collect_stats"].item()) is collect


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def test_load_payload_copies_by_name_into_the_models_own_tensors():
    model = _model()
    weight = model[1].weight
    update = OrderedDict([("1.weight", torch.full((2, 4), 2.0)), ("0.bias", torch.arange(4.0))])

    loaded = load_payload_(model, update)

    assert loaded == ("1.weight", "0.bias")
    assert model[1].weight is weight and torch.equal(weight, update["1.weight"])  # in place
    assert torch.equal(model[0].bias, torch.arange(4.0))
    update["0.bias"].zero_()
    assert torch.equal(model[0].bias, torch.arange(4.0))  # copied, not aliased


def test_first_payload_must_cover_the_whole_state_dict():
    model, source = _model(), _model()
    full = OrderedDict((k, v + 1) for k, v in source.state_dict().items())

    assert load_payload_(model, full, require_all=True) == tuple(full)
    with pytest.raises(KeyError, match=r"first payload lacks tensors of the sub-FM: \['1.weight'"):
        load_payload_(_model(), OrderedDict((k, v) for k, v in full.items() if k != "1.weight"), require_all=True)


def test_unknown_tensor_is_refused_before_anything_is_copied():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    with pytest.raises(KeyError, match=r"payload has tensors the model does not: \['2.weight'\]"):
        load_payload_(model, OrderedDict([("0.bias", torch.zeros(4)), ("2.weight", torch.zeros(1))]))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_misshapen_tensor_names_itself_and_both_shapes():
    with pytest.raises(ValueError, match=r"payload tensor 0.weight has shape \(3, 4\), model expects \(4, 3\)"):
        load_payload_(_model(), {"0.weight": torch.zeros(3, 4)})
