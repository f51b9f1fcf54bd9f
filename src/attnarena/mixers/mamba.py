"""Mamba (Gu and Dao 2023) and Mamba-2 (Dao and Gu 2024) mixers."""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena._validate import check_int
from attnarena import ops
from attnarena.mixers.recurrent import PATTERNS, HeadNorm, RecurrentMixer, ShortConv, keep_mask
from attnarena.ops._checks import compute_dtype
from attnarena.registry import register_mixer


SCANS = ("auto", "compiled", "torch")
_log = logging.getLogger("attnarena")


def _dt_bias(channels, dt_min=1e-3, dt_max=0.1):
    """Bias whose softplus is log-uniform in [dt_min, dt_max], as Mamba initializes it."""
    dt = torch.exp(torch.rand(channels) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))


@register_mixer(
    "mamba", family="state space model",
    step_export_caveat=("the graph's logits drift from the torch step's by more than 1e-3 of "
                        "their scale within three tokens"),
    paper="Gu and Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
    complexity="O(L D N)", patterns=PATTERNS, forms=("chunk", "recurrent"))
class Mamba(RecurrentMixer):
    """The Mamba block's mixer (Gu and Dao 2023): input projection to a gated pair, a short
    causal depthwise convolution and SiLU, input-dependent delta, B and C, the selective
    scan with A = -exp(A_log) (S4D-real init A_n = -(n + 1)) and skip D, gated by silu(z).
    ``heads`` is unused by the math (channels are independent) beyond dim % heads == 0.

    The scan runs compiled (``ops.scan_numba``, numba) when it can: ``scan="auto"`` takes
    the compiled kernel for the chunk form and for decoding when numba is installed and the
    tensors are on the CPU, and otherwise the PyTorch chunk form, saying so once in the
    log; ``"compiled"`` insists on the kernel, ``"torch"`` never uses it. The recurrent
    form is always the PyTorch reference loop.

    Options: state_size (N), expand, conv_size, dt_rank (default ceil(dim / 16)), form,
    chunk_size, scan.
    """

    # inference in pieces: its intermediates are expand (2) times the width of the others'
    # per token, so a piece has half as many tokens (the same time, a third less memory at
    # 4,096 tokens: docs/speed.md)
    stream_tokens = 256

    def __init__(self, dim, heads=1, causal=False, *, state_size=16, expand=2, conv_size=4,
                 dt_rank=None, form="chunk", chunk_size=16, scan="auto"):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {', '.join(SCANS)}, got {scan!r}")
        if scan == "compiled" and not ops.ssm.compiled_scan_status()[0]:
            raise ValueError("scan='compiled': " + ops.ssm.compiled_scan_status()[1])
        self.scan = scan
        for name, value in (("state_size", state_size), ("expand", expand),
                            ("conv_size", conv_size)):
            check_int(value, name)
        inner = expand * dim
        self.inner, self.state_size = inner, state_size
        self.dt_rank = math.ceil(dim / 16) if dt_rank is None else check_int(dt_rank, "dt_rank")
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv = ShortConv(inner, conv_size)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
        with torch.no_grad():
            self.dt_proj.bias.copy_(_dt_bias(inner))
        A = torch.arange(1, state_size + 1, dtype=torch.float32).repeat(inner, 1)
        self.A_log = nn.Parameter(A.log())
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def _init_state(self, batch_size, device, dtype):
        return {"ssm": torch.zeros(batch_size, self.inner, self.state_size, device=device,
                                   dtype=compute_dtype(dtype)),
                "conv": torch.zeros(batch_size, self.conv.kernel - 1, self.inner,
                                    device=device, dtype=dtype)}

    @classmethod
    def kernel(cls) -> str:
        available, why = ops.ssm.compiled_scan_status()
        return "compiled scan (numba)" if available else f"PyTorch chunk form: {why}"

    def _backend(self, device):
        """The scan backend for tensors on ``device``."""
        if self.scan == "torch":
            return "torch"
        available, why = ops.ssm.compiled_scan_status()
        if available and device.type == "cpu":
            return "compiled"
        if self.scan == "compiled":
            raise ValueError(f"scan='compiled' runs on CPU tensors, got {device}")
        _fallback_once(why if not available else
                       f"the compiled scan runs on the CPU and the tensors are on {device}")
        return "torch"

    def _step(self, x_t, state):
        # decoding takes the kernel the chunk form runs, one token at a time
        y, state = self._sequence(x_t[:, None], state, None, self.form)
        return y[:, 0], state

    def _sequence(self, x, state, mask, form):
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs, conv_state = self.conv(xs, None if state is None else state["conv"])
        xs = F.silu(xs)
        dt_low, B, C = self.x_proj(xs).split([self.dt_rank, self.state_size,
                                              self.state_size], dim=-1)
        delta = F.softplus(self.dt_proj(dt_low)) * keep_mask(mask, x)[..., None]  # pads: 0
        y, ssm = ops.selective_scan(
            xs.transpose(1, 2), delta.transpose(1, 2), -self.A_log.exp(), B.transpose(1, 2),
            C.transpose(1, 2), self.D, z.transpose(1, 2), return_last_state=True,
            initial_state=None if state is None else state["ssm"], form=form,
            chunk_size=self.chunk_size,
            backend="torch" if form == "recurrent" else self._backend(x.device))
        return self.out_proj(y.transpose(1, 2)), {"ssm": ssm, "conv": conv_state}

    def extra_repr(self):
        return f"{super().extra_repr()}, scan={self.scan!r}"


_fallbacks_said = set()


def _fallback_once(why: str) -> None:
    if why not in _fallbacks_said:
        _fallbacks_said.add(why)
        _log.warning("mamba's selective scan runs the PyTorch chunk form: %s", why)


@register_mixer(
    "mamba2", family="state space model",
    paper="Dao and Gu 2024, Transformers are SSMs: Generalized Models and Efficient "
          "Algorithms Through Structured State Space Duality",
    complexity="O(L C (N + P) + L N P)", patterns=PATTERNS,
    forms=("parallel", "chunk", "recurrent"),
    form_notes={"chunk": "SSD"})
class Mamba2(RecurrentMixer):
    """Mamba-2 (Dao and Gu 2024): A is a scalar times identity per head, so the SSM is
    decayed linear attention with q = C, k = dt * B, v = x and decay exp(dt * A) (state
    space duality); computed by the chunked SSD algorithm (``ops.scalar_gated``).
    One projection gives z, x, B, C, dt; a short convolution runs over x, B, C; the output
    is RMS-normed with the gate silu(z). ``heads`` is the number of SSM heads; head width
    P = expand * dim / heads.

    Options: state_size (N), expand, conv_size, form, chunk_size.
    """

    stream_tokens = 256  # as Mamba's: intermediates expand (2) times as wide per token

    def __init__(self, dim, heads=1, causal=False, *, state_size=64, expand=2, conv_size=4,
                 form="chunk", chunk_size=64):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)
        for name, value in (("state_size", state_size), ("expand", expand),
                            ("conv_size", conv_size)):
            check_int(value, name)
        inner = expand * dim
        self.inner, self.state_size, self.head_width = inner, state_size, inner // heads
        self.in_proj = nn.Linear(dim, 2 * inner + 2 * state_size + heads, bias=False)
        self.conv = ShortConv(inner + 2 * state_size, conv_size)
        self.A_log = nn.Parameter(torch.empty(heads).uniform_(1, 16).log())
        self.dt_bias = nn.Parameter(_dt_bias(heads))
        self.D = nn.Parameter(torch.ones(heads))
        self.norm = HeadNorm(1, inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def _init_state(self, batch_size, device, dtype):
        return {"S": torch.zeros(batch_size, self.heads, self.state_size, self.head_width,
                                 device=device, dtype=compute_dtype(dtype)),
                "conv": torch.zeros(batch_size, self.conv.kernel - 1,
                                    self.inner + 2 * self.state_size, device=device,
                                    dtype=dtype)}

    def _sequence(self, x, state, mask, form):
        B_, L, _ = x.shape
        H, N, P = self.heads, self.state_size, self.head_width
        z, xbc, dt = self.in_proj(x).split([self.inner, self.inner + 2 * N, H], dim=-1)
        xbc, conv_state = self.conv(xbc, None if state is None else state["conv"])
        xs, Bm, Cm = F.silu(xbc).split([self.inner, N, N], dim=-1)
        dt = F.softplus(dt + self.dt_bias) * keep_mask(mask, x)[..., None]  # (B, L, H)
        dt = dt.transpose(1, 2)  # (B, H, L)
        v = xs.view(B_, L, H, P).transpose(1, 2)  # (B, H, L, P)
        q = Cm[:, None].expand(B_, H, L, N)
        k = Bm[:, None] * dt[..., None]
        log_a = dt * -self.A_log.exp()[None, :, None]
        y, S = ops.scalar_gated(q, k, v, log_a=log_a, form=form, chunk_size=self.chunk_size,
                                initial_state=None if state is None else state["S"],
                                return_state=True)
        y = y + v * self.D[None, :, None, None]
        y = y.transpose(1, 2).reshape(B_, L, self.inner)
        y = self.norm(y * F.silu(z))
        return self.out_proj(y), {"S": S, "conv": conv_state}
