"""Decoding states are checked before use, for every mechanism that decodes: a state made
by the same mechanism at another width or head count, or in another dtype, is one clear
error when it comes in, never a raw torch failure; with ``debug_checks`` on, a state
holding NaN is one too, at any token, never a silent NaN."""
import pytest
import torch

import attnarena as aa
from attnarena._validate import NonFiniteError
from attnarena.mixers.base import _tensors
from conftest import make_mixer

DECODERS = [n for n in aa.list_mixers() if aa.mixer_info(n).decodes]


def _stepped(mixer, steps=3):
    state = mixer.init_state(2)
    with torch.no_grad():
        for _ in range(steps):
            _, state = mixer.step(torch.randn(2, mixer.dim), state)
    return state


@pytest.mark.parametrize("name", DECODERS)
def test_a_state_from_another_width_or_head_count_is_refused(name):
    mixer = make_mixer(name, causal=True, dim=16, heads=2)
    other = make_mixer(name, causal=True, dim=32, heads=4)
    with pytest.raises(ValueError, match="made by another mixer"):
        mixer.step(torch.randn(2, 16), _stepped(other))


@pytest.mark.parametrize("name", DECODERS)
def test_a_state_in_another_dtype_is_refused(name):
    mixer = make_mixer(name, causal=True)
    state = _stepped(mixer)
    kinds = {t.dtype for t in _tensors(state) if t.is_floating_point()}
    if kinds != {torch.float32}:
        pytest.skip(f"{name}'s state is {kinds}, not the parameters' dtype")
    converted = _convert(state, torch.bfloat16)
    with pytest.raises(TypeError, match="holds torch.bfloat16 tensors"):
        mixer.step(torch.randn(2, 16), converted)


def _convert(state, dtype):
    import dataclasses

    if isinstance(state, torch.Tensor):
        return state.to(dtype) if state.is_floating_point() else state
    if isinstance(state, dict):
        return {k: _convert(v, dtype) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_convert(v, dtype) for v in state)
    if dataclasses.is_dataclass(state):
        return dataclasses.replace(state, **{f.name: _convert(getattr(state, f.name), dtype)
                                             for f in dataclasses.fields(state)})
    return state


@pytest.mark.parametrize("name", DECODERS)
def test_a_state_holding_nan_does_not_decode_silently_under_debug_checks(name):
    mixer = make_mixer(name, causal=True)
    state = _stepped(mixer)
    floats = [t for t in _tensors(state) if t.is_floating_point() or t.is_complex()]
    for tensor in floats:
        tensor.fill_(float("nan"))
    with aa.debug_checks(), pytest.raises(NonFiniteError, match="holds NaN or infinite values"):
        mixer.step(torch.randn(2, 16), state)


@pytest.mark.parametrize("name", ["gla", "softmax", "mamba"])
def test_a_foreign_state_is_refused_even_after_steps_went_unchecked(name):
    """The state a mixer returned goes on unchecked; any other state is checked when it
    comes in, however many steps went before."""
    mixer = make_mixer(name, causal=True)
    _stepped(mixer)  # the mixer's own state now goes unchecked
    other = make_mixer(name, causal=True, dim=32)
    with pytest.raises((ValueError, TypeError), match="state"):
        mixer.step(torch.randn(2, 16), _stepped(other))


@pytest.mark.parametrize("name", DECODERS)
def test_a_good_state_still_decodes_like_the_full_forward(name):
    mixer = make_mixer(name, causal=True, dtype=torch.float64)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    state, outputs = mixer.init_state(2), []
    with torch.no_grad():
        for t in range(5):
            y, state = mixer.step(x[:, t], state)
            outputs.append(y)
        full = mixer(x)
    torch.testing.assert_close(torch.stack(outputs, 1), full, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", DECODERS)
def test_decoding_states_are_checked_the_same_way(name):
    mixer = make_mixer(name, causal=True)
    x = torch.randn(2, 16)
    fresh, _ = mixer.step(x, None)  # None: a fresh sequence, as with prefill
    expected, _ = mixer.step(x, mixer.init_state(2))
    torch.testing.assert_close(fresh, expected)
    with pytest.raises(ValueError, match="batch size 3 but the input has batch size 2"):
        mixer.step(x, mixer.init_state(3))
    with pytest.raises(TypeError, match="must be what init_state"):
        mixer.step(x, {"something": torch.zeros(2)})
    y, state = mixer.step(torch.randn(0, 16), None)
    assert y.shape == (0, 16) and state is None
    # prefill follows the same rules, whatever fast path the mechanism has
    prompt = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="batch size 3 but the input has batch size 2"):
        mixer.prefill(prompt, mixer.init_state(3))
    prompt[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x holds NaN or infinity \(first at index"):
        mixer.prefill(prompt)


def test_a_mixer_keeps_no_state_alive_and_still_pickles():
    """What marks the state a mixer returned last holds no reference to it: a state the
    caller drops is freed, and the mixer pickles and copies as before."""
    import copy
    import gc
    import pickle
    import weakref

    mixer = make_mixer("softmax", causal=True)
    state = _stepped(mixer)
    held = weakref.ref(next(_tensors(state)))
    del state
    gc.collect()
    assert held() is None
    assert pickle.loads(pickle.dumps(mixer)).info.name == "softmax"
    assert copy.deepcopy(mixer) is not mixer
