"""S4D (Gu et al. 2022) as a token mixer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena._validate import check_int
from attnarena import ops
from attnarena.mixers.recurrent import PATTERNS, RecurrentMixer
from attnarena.ops._checks import compute_dtype
from attnarena.registry import register_mixer


@register_mixer(
    "s4d", family="state space model",
    step_export_caveat="its state is complex, which ONNX lacks",
    export_caveat="its kernel is computed in complex numbers, which ONNX lacks",
    paper="Gu et al. 2022, On the Parameterization and Initialization of Diagonal State "
          "Space Models",
    complexity="O(L log L D)", patterns=PATTERNS, forms=("parallel", "recurrent"),
    form_notes={"parallel": "FFT convolution"})
class S4D(RecurrentMixer):
    """S4D (Gu et al. 2022): one diagonal complex SSM per channel with the S4D-Lin
    initialization A_n = -1/2 + i pi n, C ~ N(0, 1) complex, log dt uniform in
    [log 0.001, log 0.1], skip D; applied by FFT convolution (or token by token when
    decoding), then GELU and a GLU output projection as in the paper's S4 block.
    Noncausal use adds a scan of the reversed sequence. Padded tokens are zeroed (the
    time-invariant kernel has no per-token gate to pause the decay).

    Options: state_size (N complex modes), form.
    """

    def __init__(self, dim, heads=1, causal=False, *, state_size=32, form="parallel"):
        super().__init__(dim, heads, causal, form=form, chunk_size=None)
        check_int(state_size, "state_size")
        self.state_size = state_size
        self.log_dt = nn.Parameter(torch.rand(dim) * (math.log(0.1) - math.log(1e-3))
                                   + math.log(1e-3))
        self.log_A_real = nn.Parameter(torch.full((dim, state_size), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(state_size).float().repeat(dim, 1))
        self.C = nn.Parameter(torch.randn(dim, state_size, 2) * math.sqrt(0.5))
        self.D = nn.Parameter(torch.randn(dim))
        self.out = nn.Linear(dim, 2 * dim)

    def extra_repr(self):
        return f"{super().extra_repr()}, state_size={self.state_size}"

    def _system(self):
        """(A, C) as complex tensors; half-precision parameters are widened to float32."""
        wide = compute_dtype(self.log_A_real.dtype)
        A = torch.complex(-self.log_A_real.to(wide).exp(), self.A_imag.to(wide))
        return A, torch.view_as_complex(self.C.to(wide).contiguous())

    def _init_state(self, batch_size, device, dtype):
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return {"ssm": torch.zeros(batch_size, self.dim, self.state_size, device=device,
                                   dtype=cdtype)}

    def _sequence(self, x, state, mask, form):
        A, C = self._system()
        y, ssm = ops.s4d(x.transpose(1, 2), A, C, self.log_dt, self.D, form=form,
                         initial_state=None if state is None else state["ssm"],
                         return_state=True)
        y = F.gelu(y.transpose(1, 2))
        return F.glu(self.out(y), dim=-1), {"ssm": ssm}
