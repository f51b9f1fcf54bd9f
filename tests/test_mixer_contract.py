"""The shared mixer contract, run for every registered mixer and every pattern it declares."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attnarena as aa
from attnarena import ops
from attnarena.mixers.base import _tensors as _state_tensors
from conftest import make_mixer, pattern_cases, pattern_ids

CASES = pattern_cases()
# The tolerance the README states for half precision: mean absolute difference from
# float32 below relative * mean |float32 output| + absolute.
HALF_TOLERANCE = {torch.bfloat16: (0.05, 0.01), torch.float16: (0.01, 0.002)}
DECODERS = [n for n in aa.list_mixers() if aa.mixer_info(n).decodes]


def inputs(pattern, B=2, L=11, S=7, dim=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, dim, generator=g, dtype=torch.float64).to(dtype)
    context = None
    if pattern in ("cross", "causal_cross"):
        context = torch.randn(B, S, dim, generator=g, dtype=torch.float64).to(dtype)
    return x, context


def build(name, pattern, **kw):
    return make_mixer(name, causal=pattern in ("causal", "causal_cross"), **kw)


@pytest.mark.parametrize("name, pattern", CASES, ids=pattern_ids())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_shapes_and_dtypes(name, pattern, dtype):
    mixer = build(name, pattern, dtype=dtype)
    for L in (1, 11):
        x, context = inputs(pattern, L=L, dtype=dtype)
        y = mixer(x, context=context)
        assert y.shape == x.shape and y.dtype == dtype
        assert torch.isfinite(y.float()).all()
    if dtype in HALF_TOLERANCE:  # close to the float32 computation of the same weights
        ref = build(name, pattern)
        x, context = inputs(pattern)
        y32 = ref(x, context=context)
        y16 = mixer(x.to(dtype), context=None if context is None else context.to(dtype))
        # On average: a per-head RMS norm can flip a near-zero head output's sign under
        # half-precision rounding, so single elements may differ by more.
        relative, absolute = HALF_TOLERANCE[dtype]
        assert (y16.float() - y32).abs().mean() < relative * y32.abs().mean() + absolute


@pytest.mark.parametrize("name, pattern", [c for c in CASES if c[1] in ("causal", "causal_cross")],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_causality(name, pattern):
    mixer = build(name, pattern)
    L = 13
    x, context = inputs(pattern, L=L, S=L)
    y = mixer(x, context=context)
    for t in (0, 4, 9):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:]) * 3
        c2 = None
        if context is not None:
            c2 = context.clone()
            c2[:, t + 1:] = torch.randn_like(c2[:, t + 1:]) * 3
        y2 = mixer(x2, context=c2)
        torch.testing.assert_close(y2[:, :t + 1], y[:, :t + 1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(y2[:, t + 1:], y[:, t + 1:], atol=1e-4)


@pytest.mark.parametrize("name, pattern", CASES, ids=pattern_ids())
def test_padding(name, pattern):
    mixer = build(name, pattern)
    x, context = inputs(pattern, L=12, S=9)
    source = x if context is None else context
    keep = torch.ones(source.shape[:2], dtype=torch.bool)
    keep[0, -3:] = False  # right padding
    keep[1, 2] = False  # a hole in the middle
    y = mixer(x, context=context, mask=keep)
    noisy = source.clone()
    noisy[~keep] = torch.randn_like(noisy[~keep]) * 5
    if context is None:
        y2 = mixer(noisy, mask=keep)
        real = keep
    else:
        y2 = mixer(x, context=noisy, mask=keep)
        real = torch.ones(x.shape[:2], dtype=torch.bool)
    torch.testing.assert_close(y2[real], y[real], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name, pattern", CASES, ids=pattern_ids())
def test_a_padded_batch_equals_each_sequence_alone(name, pattern):
    """Rows padded on the right (to the longest, as a batch is) give, at their real tokens,
    what the same sequences give unpadded and alone; a mechanism whose published math mixes
    over the padded length says so in the registry, and is shown to differ."""
    mixer = build(name, pattern, dtype=torch.float64)
    x, context = inputs(pattern, L=12, S=10, dtype=torch.float64)
    source = x if context is None else context
    lengths = (5, 9) if context is not None else (7, 10)
    keep = torch.arange(source.shape[1])[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        y = mixer(x, context=context, mask=keep)
        pairs = []
        for row, n in enumerate(lengths):
            if context is None:
                pairs.append((y[row, :n], mixer(x[row:row + 1, :n])[0]))
            else:
                alone = mixer(x[row:row + 1], context=context[row:row + 1, :n])[0]
                pairs.append((y[row], alone))
    caveat = aa.mixer_info(name).padding_caveat
    if caveat is None:
        for padded, alone in pairs:
            torch.testing.assert_close(padded, alone, rtol=1e-6, atol=1e-6)
    else:  # the caveat is real: the outputs differ
        assert max(float((p - a).abs().max()) for p, a in pairs) > 1e-3, caveat


def _forms(name):
    # Forms run through the constructor's form option; a mechanism without one has a single
    # training form (registration requires the option of every mechanism with a chunk form).
    forms = aa.mixer_info(name).forms
    return sorted(forms) if "form" in aa.mixer_options(name) else []


def _reference_form(name):
    """The plain form others are checked against: the recurrence where there is one."""
    forms = aa.mixer_info(name).forms
    return "recurrent" if "recurrent" in forms else "parallel"


FORM_CASES = [(n, p, f) for n, p in CASES for f in _forms(n) if f != _reference_form(n)]


@pytest.mark.parametrize("name, pattern, form", FORM_CASES,
                         ids=[f"{n}-{p}-{f}" for n, p, f in FORM_CASES])
@pytest.mark.parametrize("L", [1, 5, 8, 13])
def test_forms_agree_with_reference(name, pattern, form, L):
    reference = build(name, pattern, form=_reference_form(name))
    other = build(name, pattern, form=form)
    other.load_state_dict(reference.state_dict())
    x, context = inputs(pattern, L=L, S=6)
    keep = None
    if pattern == "self":
        keep = torch.ones(x.shape[:2], dtype=torch.bool)
        keep[0, L // 2:] = False
    torch.testing.assert_close(other(x, context=context, mask=keep),
                               reference(x, context=context, mask=keep), rtol=1e-5, atol=1e-5)


STREAMERS = [n for n in DECODERS if make_mixer(n, causal=True).streams]


@pytest.mark.parametrize("name", STREAMERS)
def test_a_long_inference_forward_runs_in_pieces_with_the_same_outputs(name):
    """Without gradients a streaming mixer runs past 2 * stream_tokens as prefills of
    stream_tokens (carrying its fixed-size state), equal to the whole forward."""
    mixer = make_mixer(name, causal=True, dtype=torch.float64)
    x, _ = inputs("causal", L=19, dtype=torch.float64)
    whole = mixer(x).detach()
    mixer.stream_tokens = 4
    calls = []
    original = mixer._prefill
    mixer._prefill = lambda piece, state: calls.append(piece.shape[1]) or original(piece, state)
    with torch.no_grad():
        streamed = mixer(x)
    assert calls == [4, 4, 4, 4, 3]  # in pieces, indeed
    torch.testing.assert_close(streamed, whole, rtol=1e-10, atol=1e-10)
    # the state it carries does not grow with the length (no cache)
    _, short = mixer.prefill(x[:, :5])
    _, long = mixer.prefill(x)
    assert [t.shape for t in _state_tensors(short)] == [t.shape for t in _state_tensors(long)]
    with torch.no_grad():  # with a mask, or under gradients, the whole forward runs
        calls.clear()
        mixer(x, mask=torch.ones(x.shape[:2], dtype=torch.bool))
    assert calls == []


def _gradients(mixer, x, weight):
    """Output, and gradients of <output, weight> w.r.t. x and every parameter."""
    x = x.detach().requires_grad_(True)
    mixer.zero_grad(set_to_none=True)
    y = mixer(x)
    (y * weight).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in mixer.named_parameters()
                                if p.requires_grad}


def _pieces_match_whole(mixer):
    x, _ = inputs("causal", L=19, dtype=torch.float64)
    weight = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mixer.streams = False
    whole = _gradients(mixer, x, weight)
    del mixer.streams
    mixer.train_rows = 8  # batch 2: pieces of 4 tokens
    calls = []
    original = mixer._prefill
    mixer._prefill = lambda piece, state: calls.append(
        (piece.shape[1], torch.is_grad_enabled())) or original(piece, state)
    pieced = _gradients(mixer, x, weight)
    forward, backward = calls[:5], calls[5:]
    assert forward == [(4, False)] * 4 + [(3, False)]  # without a graph, in pieces
    assert backward == [(3, True)] + [(4, True)] * 4  # recomputed last to first
    torch.testing.assert_close(pieced[0], whole[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pieced[1], whole[1], rtol=1e-10, atol=1e-10)
    assert pieced[2].keys() == whole[2].keys()
    for key, grad in whole[2].items():
        if grad is None:
            assert pieced[2][key] is None or not pieced[2][key].any(), key
        else:
            torch.testing.assert_close(pieced[2][key], grad, rtol=1e-10, atol=1e-10,
                                       msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("name", STREAMERS)
def test_a_long_training_forward_runs_in_recomputed_pieces_with_the_same_gradients(name):
    """With ``train_rows`` set, a streaming mixer under gradients runs past twice its piece
    length (train_rows over the batch) as pieces recomputed in the backward pass: the whole
    forward's outputs and gradients (of the input and of every parameter), float64."""
    _pieces_match_whole(make_mixer(name, causal=True, dtype=torch.float64))


FORM_CASES = [(n, f) for n in STREAMERS if "form" in aa.mixer_options(n)
              for f in sorted(aa.mixer_info(n).forms) if f != aa.mixer_options(n)["form"]]


@pytest.mark.parametrize("name,form", FORM_CASES, ids=[f"{n}-{f}" for n, f in FORM_CASES])
def test_training_in_pieces_in_every_form(name, form):
    """Pieces run the mixer's own form; each form's gradients in pieces are its whole
    forward's (and the chunk form's at other chunk sizes)."""
    _pieces_match_whole(make_mixer(name, causal=True, dtype=torch.float64, form=form))
    if "chunk_size" in aa.mixer_options(name) and form == "recurrent":
        _pieces_match_whole(make_mixer(name, causal=True, dtype=torch.float64, chunk_size=3))


def test_training_in_pieces_needs_a_gradient_and_no_mask():
    mixer = make_mixer("gla", causal=True)
    mixer.train_rows = 8
    calls = []
    original = mixer._prefill
    mixer._prefill = lambda piece, state: calls.append(piece.shape[1]) or original(piece, state)
    x, _ = inputs("causal", L=19)
    mixer(x, mask=torch.ones(x.shape[:2], dtype=torch.bool)).sum().backward()
    for p in mixer.parameters():
        p.requires_grad_(False)
    mixer(x)  # nothing to differentiate: the whole forward
    assert calls == []
    mixer(x.requires_grad_(True)).sum().backward()
    assert calls == [4, 4, 4, 4, 3, 3, 4, 4, 4, 4]


def test_training_in_pieces_leaves_hooked_mixers_whole_and_refuses_outside_tensors():
    """A hook inside the mixer (pruning's gates) sees one forward and gets its gradient; a
    forward that reads a tensor requiring gradients from elsewhere is refused, not given
    a lost gradient."""
    mixer = make_mixer("gla", causal=True, dtype=torch.float64)
    mixer.train_rows = 8
    x, _ = inputs("causal", L=19, dtype=torch.float64)
    gate = torch.ones(mixer.dim, dtype=torch.float64, requires_grad=True)
    seen = []
    handle = mixer.o_proj.register_forward_pre_hook(
        lambda module, args: seen.append(1) or (args[0] * gate,))
    mixer(x).square().sum().backward()
    handle.remove()
    assert len(seen) == 1 and gate.grad is not None and gate.grad.abs().sum() > 0
    whole = gate.grad.clone()
    gate.grad = None
    mixer.streams = False
    handle = mixer.o_proj.register_forward_pre_hook(lambda module, args: (args[0] * gate,))
    mixer(x).square().sum().backward()
    handle.remove()
    torch.testing.assert_close(gate.grad, whole, rtol=1e-12, atol=1e-12)
    del mixer.streams
    outside = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    original = mixer._prefill

    def scaled(piece, state):
        y, state = original(piece, state)
        return y * outside, state

    mixer._prefill = scaled
    y = mixer(x)
    with pytest.raises(RuntimeError, match="requiring gradients from outside.*train_rows = None"):
        y.sum().backward()


def test_training_in_pieces_is_an_option_of_the_streaming_mixers():
    assert aa.mixer_options("gla")["train_rows"] is None
    assert "train_rows" not in aa.mixer_options("softmax")
    mixer = aa.create_mixer("gla", 16, heads=2, causal=True, train_rows=8)
    assert mixer.train_rows == 8 and mixer._train_tokens(2) == 4
    calls = []
    original = mixer._prefill
    mixer._prefill = lambda piece, state: calls.append(piece.shape[1]) or original(piece, state)
    x, _ = inputs("causal", L=19)
    mixer(x.requires_grad_(True)).sum().backward()
    assert calls[:5] == [4, 4, 4, 4, 3]
    calls.clear()
    plain = aa.create_mixer("gla", 16, heads=2, causal=True)
    plain._prefill = mixer._prefill
    plain(x).sum().backward()  # without the option, training runs whole
    assert calls == []
    with pytest.raises(ValueError, match="train_rows"):
        aa.create_mixer("softmax", 16, heads=2, causal=True, train_rows=8)
    with pytest.raises(ValueError, match="train_rows"):
        aa.create_mixer("gla", 16, heads=2, causal=True, train_rows=0)


def test_a_growing_cache_does_not_stream():
    assert not make_mixer("softmax", causal=True).streams
    assert {"linear", "gla", "retention", "deltanet", "mamba2"} <= set(STREAMERS)


@pytest.mark.parametrize("name", DECODERS)
def test_step_equals_causal_forward(name):
    mixer = make_mixer(name, causal=True)
    x, _ = inputs("causal", L=13)
    y = mixer(x)
    state = mixer.init_state(batch_size=2)
    steps = []
    for t in range(x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("split", [1, 6, 12])
def test_prefill_then_step_continues_the_sequence(name, split):
    mixer = make_mixer(name, causal=True)
    x, _ = inputs("causal", L=13)
    y = mixer(x)
    head, state = mixer.prefill(x[:, :split])
    tail = []
    for t in range(split, x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        tail.append(y_t)
    got = torch.cat([head] + [t[:, None] for t in tail], dim=1)
    torch.testing.assert_close(got, y, rtol=1e-5, atol=1e-5)


GRAD_CASES = [(n, p, f) for n, p in CASES for f in (_forms(n) or [None])]


@pytest.mark.parametrize("name, pattern, form", GRAD_CASES,
                         ids=[f"{n}-{p}-{f}" for n, p, f in GRAD_CASES])
def test_gradcheck(name, pattern, form):
    options = {} if form is None else {"form": form}
    mixer = build(name, pattern, dim=8, heads=2, dtype=torch.float64, **options)
    mixer.surrogate_gradients = False  # a surrogate (straight-through) is no derivative
    x, context = inputs(pattern, B=1, L=5, S=4, dim=8, dtype=torch.float64)
    x.requires_grad_(True)
    args = (x,) if context is None else (x, context.requires_grad_(True))
    assert torch.autograd.gradcheck(lambda *a: mixer(*a), args, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name, pattern", CASES, ids=pattern_ids())
def test_parameters_get_gradients(name, pattern):
    mixer = build(name, pattern).train()
    x, context = inputs(pattern)
    x.requires_grad_(True)
    mixer(x, context=context).square().sum().backward()
    grads = [p.grad for p in mixer.parameters() if p.requires_grad]
    # parameter-free mixers (FNet, pooling) have only the input's gradient
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", aa.list_mixers())
def test_bad_input(name):
    info = aa.mixer_info(name)
    causal = "self" not in info.patterns
    mixer = make_mixer(name, causal=causal)
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match=r"shape \(batch, length, 16\)"):
        mixer(torch.randn(5, 16))
    with pytest.raises(ValueError, match="16"):
        mixer(torch.randn(2, 5, 12))
    with pytest.raises(TypeError, match="floating"):
        mixer(torch.ones(2, 5, 16, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        mixer([[0.0] * 16])
    if any(True for _ in mixer.parameters()):  # parameter-free mixers take any float dtype
        with pytest.raises(TypeError, match="dtype"):
            mixer(x.double())
    with pytest.raises(TypeError, match="bool"):
        mixer(x, mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"mask must have shape \(batch, length\)"):
        mixer(x, mask=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one token"):
        mixer(torch.randn(2, 0, 16))
    cross = "causal_cross" if causal else "cross"
    if cross in info.patterns:
        with pytest.raises(ValueError, match="context"):
            mixer(x, context=torch.randn(2, 4, 12))
        with pytest.raises(ValueError, match="batch"):
            mixer(x, context=torch.randn(3, 4, 16))
        with pytest.raises(ValueError, match=r"mask must have shape .* context"):
            mixer(x, context=torch.randn(2, 4, 16), mask=torch.ones(2, 5, dtype=torch.bool))
    else:
        with pytest.raises(ValueError, match=f"does not support the '{cross}' pattern"):
            mixer(x, context=torch.randn(2, 4, 16))
    if not causal:  # no decoding without a causal, recurrent mixer
        with pytest.raises(ValueError, match="causal|no recurrent form"):
            mixer.init_state(batch_size=2)
        with pytest.raises(ValueError, match="causal|no recurrent form"):
            mixer.step(x[:, 0], None)
    if info.decodes:
        causal_mixer = make_mixer(name, causal=True)
        state = causal_mixer.init_state(batch_size=2)
        with pytest.raises(ValueError, match=r"x_t of shape \(batch, 16\)"):
            causal_mixer.step(x, state)
        with pytest.raises(ValueError, match="batch_size"):
            causal_mixer.init_state(batch_size=0)


@pytest.mark.parametrize("name, pattern", CASES, ids=pattern_ids())
def test_huge_finite_inputs_stay_finite_or_are_refused(name, pattern):
    """The contract for finite inputs beyond what float32 can carry through a mechanism:
    the output is finite, or the call raises NonFiniteError saying it overflowed."""
    from attnarena._validate import NonFiniteError

    mixer = build(name, pattern)
    x, context = inputs(pattern)
    with torch.no_grad():
        try:
            y = mixer(x * 1e10, context=None if context is None else context * 1e10)
        except NonFiniteError as error:
            assert "overflowed" in str(error)
        else:
            assert torch.isfinite(y).all()


@given(st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
       st.integers(0, 40), st.sampled_from([None, float("nan"), float("inf"), -float("inf")]),
       st.sampled_from([0.0, 0.5, 1.0]), st.integers(0, 2**16))
def test_the_finite_check_agrees_with_isfinite(dtype, n, special, huge, seed):
    """The one-reduction check of finite inputs and outputs (a sum is finite only if every
    entry is) answers as isfinite over every entry, sums that overflow included (a share
    ``huge`` of the entries at the dtype's largest value)."""
    from attnarena._validate import all_finite

    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    if n:
        t[torch.rand(n, generator=g) < huge] = torch.finfo(dtype).max
        if special is not None:
            t[int(torch.randint(n, (1,), generator=g))] = special
    assert all_finite(t) == bool(torch.isfinite(t).all())
    assert all_finite(t.reshape(1, n, 1)) == all_finite(t)


@pytest.mark.parametrize("name, pattern", pattern_cases())
def test_batch_zero_gives_an_empty_output(name, pattern):
    mixer = make_mixer(name, causal=pattern in ("causal", "causal_cross"))
    context = torch.randn(0, 5, 16) if "cross" in pattern else None
    assert mixer(torch.randn(0, 7, 16), context=context).shape == (0, 7, 16)


@pytest.mark.parametrize("name, pattern", pattern_cases())
def test_non_finite_inputs_are_refused(name, pattern):
    mixer = make_mixer(name, causal=pattern in ("causal", "causal_cross"))
    x = torch.randn(2, 9, 16)
    context = torch.randn(2, 6, 16) if "cross" in pattern else None
    for bad in (float("nan"), float("inf")):
        broken = x.clone()
        broken[1, 5, 3] = bad
        with pytest.raises(ValueError, match=r"x holds NaN or infinity \(first at index "
                                             r"\(1, 5, 3\)\)"):
            mixer(broken, context=context)
    if context is not None:
        context[0, 2, 0] = float("nan")
        with pytest.raises(ValueError, match="context holds NaN"):
            mixer(x, context=context)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 5] = False
    if context is None:  # padding may hold anything: it is zeroed before the check
        broken = x.clone()
        broken[1, 5] = float("nan")
        assert torch.isfinite(mixer(broken, mask=keep)).all()


def test_ops_and_options_refuse_what_has_no_meaning():
    empty = torch.randn(1, 2, 0, 4)
    with pytest.raises(ValueError, match="at least one position"):
        ops.linear_attention(empty, empty, empty, causal=True, form="chunk")
    with pytest.raises(ValueError, match="at least one position"):
        ops.gla(empty, empty, empty, log_g=empty, form="chunk")
    with pytest.raises(ValueError, match="at least one position"):
        ops.selective_scan(torch.randn(1, 3, 0), torch.rand(1, 3, 0), -torch.ones(3, 2),
                           torch.randn(1, 2, 0), torch.randn(1, 2, 0))
    with pytest.raises(ValueError, match="delta .* must be >= 0"):
        ops.selective_scan(torch.randn(1, 3, 5), -torch.rand(1, 3, 5), -torch.ones(3, 2),
                           torch.randn(1, 2, 5), torch.randn(1, 2, 5))
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(TypeError, match="input_gate must be a floating-point"):
        ops.mlstm(q, q, q, input_gate=torch.zeros(1, 2, 5, dtype=torch.long),
                  forget_gate=torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match="forget_gate holds NaN"):
        ops.mlstm(q, q, q, input_gate=torch.zeros(1, 2, 5),
                  forget_gate=torch.full((1, 2, 5), float("nan")))
    with pytest.raises(ValueError, match="input_gate holds NaN or inf"):
        ops.mlstm(q, q, q, input_gate=torch.full((1, 2, 5), float("inf")),
                  forget_gate=torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match="dt_rank must be a positive int"):
        aa.create_mixer("mamba", dim=16, dt_rank=0)


def test_options_that_had_no_check_are_refused():
    with pytest.raises(ValueError, match="levels must be a positive int, got 0"):
        aa.create_mixer("log_linear", dim=16, heads=2, causal=True, levels=0)
    with pytest.raises(ValueError, match="top_k must be a positive int, got 1.5"):
        aa.create_mixer("moh", dim=16, heads=4, top_k=1.5)
    s4d = aa.create_mixer("s4d", dim=16, causal=True)
    assert "chunk_size" not in repr(s4d)  # it takes none
