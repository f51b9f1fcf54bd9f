"""The MetaFormer block (Yu et al. 2022): pre-norm token mixer, then pre-norm MLP."""
from __future__ import annotations

from torch import nn

from attnarena.registry import create_mixer


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, dim))


class Block(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm(x)). ``mlp_dim=0`` leaves the MLP out.

    ``norm=False`` leaves the layer norms out. ``mixer_dim`` (LRA's ``qkv_dim``) runs the
    mixer at another width: a linear map from ``dim`` into it and one back out.
    """

    def __init__(self, dim: int, mixer: str, *, heads: int = 1, causal: bool = False,
                 mixer_options: dict | None = None, mlp_dim: int | None = None,
                 dropout: float = 0.0, mixer_dim: int | None = None, norm: bool = True):
        super().__init__()
        mlp_dim = 4 * dim if mlp_dim is None else mlp_dim
        def layer_norm():
            return nn.LayerNorm(dim) if norm else nn.Identity()

        self.norm1 = layer_norm()
        inner = dim if mixer_dim is None else mixer_dim
        self.down = nn.Linear(dim, inner, bias=False) if inner != dim else nn.Identity()
        self.up = nn.Linear(inner, dim, bias=False) if inner != dim else nn.Identity()
        self.mixer = create_mixer(mixer, inner, heads=heads, causal=causal,
                                  **(mixer_options or {}))
        self.drop = nn.Dropout(dropout)
        self.norm2 = layer_norm() if mlp_dim else None
        self.mlp = MLP(dim, mlp_dim, dropout) if mlp_dim else None

    def forward(self, x, mask=None):
        return self._finish(x, self.up(self.mixer(self.down(self.norm1(x)), mask=mask)))

    def _finish(self, x, y):
        x = x + self.drop(y)
        if self.mlp is not None:
            x = x + self.drop(self.mlp(self.norm2(x)))
        return x

    def step(self, x_t, state):
        """One token: x_t (B, dim) -> (B, dim), with the mixer's decoding state."""
        y, state = self.mixer.step(self.down(self.norm1(x_t)), state)
        return self._finish(x_t, self.up(y)), state

    def prefill(self, x):
        """Causal forward over (B, L, dim) that also returns the mixer's decoding state."""
        y, state = self.mixer.prefill(self.down(self.norm1(x)))
        return self._finish(x, self.up(y)), state
