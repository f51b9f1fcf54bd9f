"""Input validation shared by the functional kernels: clear errors instead of deep torch ones."""
from __future__ import annotations

import torch

from attnarena._validate import check_int, check_mask, entering
from attnarena.registry import FORMS



def check_qkv(q, k, v, *, same_length: bool = False) -> None:
    """Check q, k, v are float tensors shaped (B, H, L, Dk), (B, H, S, Dk), (B, H, S, Dv)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (batch, heads, length, head_dim), "
                             f"got {t.dim()} dims: {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ValueError("q, k, v must share batch and heads (dims 0 and 1), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share head_dim, got {q.shape[-1]} and {k.shape[-1]}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError("q, k and v need at least one position, got lengths "
                         f"{q.shape[2]} (q) and {k.shape[2]} (k, v)")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must share length, got {k.shape[2]} and {v.shape[2]}")
    if same_length and q.shape[2] != k.shape[2]:
        raise ValueError("this form needs q as long as k and v (causal use aligns positions), "
                         f"got lengths {q.shape[2]} and {k.shape[2]}")


def check_inner_model(q, k, v, lr, form, forms, model: str) -> tuple:
    """The checks of the ops that train an inner model while reading (TTT, Titans): q, k,
    v of one length and width D (the model maps keys to values of their own width), a known
    form, and per-token learning rates lr (B, H, L) >= 0. Returns (B, H, L, D)."""
    check_qkv(q, k, v, same_length=True)
    if form not in forms:
        raise ValueError(f"unknown form {form!r}; valid forms: {', '.join(forms)}")
    B, H, L, D = q.shape
    if v.shape[-1] != D:
        raise ValueError(f"{model} maps keys to values of the same width: v needs {D} "
                         f"channels, got {v.shape[-1]}")
    if not isinstance(lr, torch.Tensor) or tuple(lr.shape) != (B, H, L) \
            or (entering() and (torch.isnan(lr).any() or (lr < 0).any())):
        raise ValueError(f"lr must be a tensor (B, H, L) = {(B, H, L)} of values >= 0")
    return B, H, L, D


def tracing() -> bool:
    """True while torch traces a graph (ONNX export): a shortcut taken on what the inputs
    hold (no strongly decaying chunk, no padding) then takes the general path, so the
    graph holds for every input, not only for those it was traced on."""
    return torch.jit.is_tracing()


def check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; valid forms: {', '.join(FORMS)}")


def check_chunk_size(chunk_size) -> None:
    check_int(chunk_size, "chunk_size")


def check_state(state, expected: tuple, name: str = "initial_state") -> None:
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(state).__name__}")
    if tuple(state.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(state.shape)}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs accumulate in float32 so running sums neither overflow nor drift."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype



def check_key_mask(mask, q, k) -> None:
    """A key mask is None or a (batch, key_length) bool tensor, True = real key."""
    check_mask(mask, (k.shape[0], k.shape[2]), "the keys (a key mask)")
