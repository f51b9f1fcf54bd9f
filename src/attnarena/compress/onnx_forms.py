"""ONNX forms of torch operators that the exporter registers (opset ``OPSET``): where opset
17 lacks an operator, where torch's own form loses precision in ONNX Runtime, and where it
does work the graph does not need. ``register_forms()`` registers them once, before a
trace."""
from __future__ import annotations

import torch

OPSET = 17


_SYMBOLICS = []


def register_forms() -> None:
    """ONNX forms of torch operators that opset 17 lacks or exports inexactly, registered
    once:

    - expm1(x) as tanh(x / 2) (exp(x) + 1), exact in real numbers and, unlike exp(x) - 1,
      accurate to a few float32 roundings relative to the result near x = 0 too;
    - log_sigmoid(x) as min(x, 0) - log1p(exp(-|x|)): torch's own export, log(sigmoid(x)),
      loses every x below about -18 in ONNX Runtime, whose sigmoid clamps its input there
      (a gate's log decay of -22 became -18: a trained GLA's outputs moved by a fifth of
      their scale);
    - scaled_dot_product_attention without a pass over the weights after the softmax
      (``_attention``)."""
    if _SYMBOLICS:
        return

    def expm1(g, x):
        half = g.op("Tanh", g.op("Mul", x, _constant(g, 0.5, x)))
        return g.op("Mul", half, g.op("Add", g.op("Exp", x), _constant(g, 1.0, x)))

    def log_sigmoid(g, x):
        tail = g.op("Exp", g.op("Neg", g.op("Abs", x)))  # in (0, 1]: never overflows
        # log(1 + t) as log(u) t / (u - 1) with u = 1 + t (t itself where u rounds to 1):
        # accurate relative to the result for small t too (Goldberg's log1p)
        u = g.op("Add", tail, _constant(g, 1.0, x))
        ratio = g.op("Div", g.op("Mul", g.op("Log", u), tail),
                     g.op("Sub", u, _constant(g, 1.0, x)))
        log1p = g.op("Where", g.op("Equal", u, _constant(g, 1.0, x)), tail, ratio)
        return g.op("Sub", g.op("Min", x, _constant(g, 0.0, x)), log1p)

    for name, symbolic in (("aten::expm1", expm1), ("aten::log_sigmoid", log_sigmoid),
                           ("aten::scaled_dot_product_attention", _attention)):
        torch.onnx.register_custom_op_symbolic(name, symbolic, OPSET)
        _SYMBOLICS.append(name)


_SCALARS = {"Float": torch.float32, "Double": torch.float64, "Half": torch.float16,
            "BFloat16": torch.bfloat16}


def _constant(g, value: float, like):
    """A scalar constant of ``like``'s type: typed at export where the trace knows it (ONNX
    Runtime then folds it, e.g. a scale into its matrix product), else cast to it in the
    graph."""
    known = like.type().scalarType() if hasattr(like.type(), "scalarType") else None
    if known in _SCALARS:
        return g.op("Constant", value_t=torch.tensor(value, dtype=_SCALARS[known]))
    return g.op("CastLike", g.op("Constant", value_t=torch.tensor(value)), like)


def _is_none(value) -> bool:
    return value is None or value.node().mustBeNone()


def _attention(g, q, k, v, mask=None, dropout=None, causal=None, scale=None, gqa=None):
    """``F.scaled_dot_product_attention`` as ONNX operators, as torch computes it: softmax of
    q k^T scale plus the mask, and zeros for a query whose mask lets it see no key.

    torch's own export gives masked scores -inf and then replaces the NaN such a query gets
    with zeros by a Where over every weight (B x H x L x S values a layer; on the arena's
    width-64 ListOps model, 31% of ONNX Runtime's time at batch 32). Here masked scores get
    the lowest finite float instead, which exp turns into exactly 0 wherever a row has any
    visible key (the same weights as -inf), and a row without one (uniform weights then) is
    zeroed on the output, found from the mask's own row maxima (the mask's size, not the
    weights'). A float mask's -inf is raised to that lowest float, and a row of -inf alone
    zeroed alike (torch's export gives it NaN)."""
    from torch.onnx import symbolic_helper as helper

    dropout = helper._maybe_get_const(dropout, "f") if dropout is not None else 0.0
    causal = bool(helper._maybe_get_const(causal, "b")) if not _is_none(causal) else False
    if not _is_none(gqa) and helper._maybe_get_const(gqa, "b"):
        raise torch.onnx.errors.SymbolicValueError(
            "scaled_dot_product_attention with enable_gqa has no ONNX form here (repeat the "
            "key and value heads instead)", q)
    if dropout:
        raise torch.onnx.errors.SymbolicValueError(
            f"scaled_dot_product_attention with dropout {dropout} is training-only; export "
            "the model in eval mode", q)

    def constant(value, like):
        return _constant(g, value, like)

    def last(shape, count):
        return helper._slice_helper(g, shape, axes=[0], starts=[-count], ends=[2 ** 62])

    sizes = q.type().varyingSizes() if hasattr(q.type(), "varyingSizes") else None
    if not _is_none(scale):
        given = helper._maybe_get_const(scale, "f")
        scale = (constant(float(given), q) if isinstance(given, (int, float))
                 else g.op("CastLike", scale, q))
    elif sizes and sizes[-1] is not None:  # a constant ONNX Runtime folds into the product
        scale = constant(sizes[-1] ** -0.5, q)
    else:
        width = g.op("Cast", last(g.op("Shape", q), 1), to_i=1)  # to float
        scale = g.op("CastLike", g.op("Reciprocal", g.op("Sqrt", width)), q)
    scores = g.op("MatMul", g.op("Mul", q, scale),
                  g.op("Transpose", k, perm_i=_swap_last(k)))
    seen = None
    if causal:  # top-left aligned: query i sees keys 0..i, so every query sees one
        ones = g.op("ConstantOfShape", last(g.op("Shape", scores), 2),
                    value_t=torch.tensor([1], dtype=torch.bool))
        mask = g.op("Trilu", ones, upper_i=0)  # (L, S)
    if not _is_none(mask):
        lowest = constant(float(torch.finfo(torch.float32).min), scores)
        if causal or mask.type().scalarType() == "Bool":
            mask = g.op("Where", mask, constant(0.0, scores), lowest)
            if not causal:
                seen = g.op("Greater", g.op("ReduceMax", mask, axes_i=[-1], keepdims_i=1),
                            lowest)
        else:  # torch gives zeros to a row of -inf too, and a finite row its softmax
            mask = g.op("CastLike", mask, scores)
            seen = g.op("Greater", g.op("ReduceMax", mask, axes_i=[-1], keepdims_i=1),
                        constant(float("-inf"), scores))
            mask = g.op("Max", mask, lowest)
        scores = g.op("Add", scores, mask)
    out = g.op("MatMul", g.op("Softmax", scores, axis_i=-1), v)
    if seen is not None:
        out = g.op("Mul", out, g.op("CastLike", seen, out))
    return out


def _swap_last(value) -> list[int]:
    rank = value.type().dim()
    if rank is None:
        raise torch.onnx.errors.SymbolicValueError(
            "scaled_dot_product_attention needs inputs of known rank to export", value)
    return [*range(rank - 2), rank - 1, rank - 2]
