"""In-context linear regression (Garg et al. 2022, "What Can Transformers Learn In-Context?
A Case Study of Simple Function Classes"; von Oswald et al. 2023, "Transformers learn
in-context by gradient descent").

Each prompt draws w ~ N(0, I / d) and n points x_i ~ N(0, I_d), y_i = w . x_i + noise. The
model reads 2n tokens of d + 1 numbers: for each i a query token (x_i, 0) and then the
pair token (x_i, y_i). At every query token it predicts y_i from the i - 1 pairs before it,
so the loss covers every prefix. Next to the model the task reports closed-form baselines
on the same prompts: least squares (minimum norm), ridge, one step of gradient descent
from w = 0 with the best single step size, and the zero predictor.

With tokens laid out this way one layer of linear self-attention (the ``linear`` mixer
with ``feature_map="identity"``, ``normalize=False``; a ``SequenceRegressor`` without
norms) can compute exactly the one-step-GD prediction eta * x_i . sum_{j<i} y_j x_j.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnarena._validate import check_int
from attnarena.tasks.base import check_split
from attnarena.tasks.kinds import RegressionTask
from attnarena.tasks.registry import register_task


def gd_step_features(x, y):
    """p[b, i] = x_i . sum_{j<i} y_j x_j, the one-step-GD prediction at unit step size.

    x: (B, n, d), y: (B, n) -> (B, n)."""
    weighted = torch.cumsum(y[..., None] * x, dim=1) - y[..., None] * x  # sum over j < i
    return (weighted * x).sum(-1)


def best_step_size(x, y) -> float:
    """The step size minimizing the squared error of one GD step over all prefixes."""
    p = gd_step_features(x, y)
    return float((p * y).sum() / (p * p).sum().clamp_min(1e-30))


def prefix_solutions(x, y, ridge: float):
    """(least-squares predictions, ridge predictions), each (B, n): at position i the fit
    on pairs j < i (nothing to fit at i = 0: predict 0)."""
    B, n, d = x.shape
    lstsq = torch.zeros(B, n, dtype=x.dtype)
    ridged = torch.zeros(B, n, dtype=x.dtype)
    eye = torch.eye(d, dtype=x.dtype)
    for i in range(1, n):
        X, Y = x[:, :i], y[:, :i]
        w_ls = torch.linalg.pinv(X) @ Y[..., None]  # minimum-norm least squares
        gram = X.transpose(1, 2) @ X + ridge * eye
        w_ridge = torch.linalg.solve(gram, X.transpose(1, 2) @ Y[..., None])
        lstsq[:, i] = (x[:, i:i + 1] @ w_ls)[:, 0, 0]
        ridged[:, i] = (x[:, i:i + 1] @ w_ridge)[:, 0, 0]
    return lstsq, ridged


@register_task
@dataclass(frozen=True)
class InContextRegression(RegressionTask):
    """Noisy linear functions of ``dim``-dimensional inputs, ``points`` pairs per prompt.
    ``ridge`` is the ridge baseline's penalty (default: noise^2 * d, the Bayes-optimal
    penalty for w ~ N(0, I / d), floored at 1e-6)."""

    dim: int = 10
    points: int = 10
    noise: float = 0.0
    ridge: float | None = None

    name = "icl_regression"
    # von Oswald et al.'s setting: d = 10, 10 context points, noiseless, one layer of linear
    # self-attention.
    presets = {
        "paper": {"task": {"dim": 10, "points": 10},
                  "model": {"dim": 32, "depth": 1, "heads": 1, "mlp_dim": 0,
                            "position": "none", "norm": False},
                  "train": {"steps": 5000, "batch": 2048, "lr": 1e-3, "warmup": 100,
                            "schedule": "cosine", "weight_decay": 0.0, "eval_every": 500,
                            "eval_examples": 4096}},
        "cpu": {"task": {"dim": 5, "points": 10},
                "model": {"dim": 64, "depth": 2, "heads": 4, "position": "learned"},
                "train": {"steps": 1500, "batch": 64, "lr": 1e-3, "warmup": 100,
                          "schedule": "cosine", "weight_decay": 0.0, "eval_every": 250,
                          "eval_examples": 2048}},
    }

    def __post_init__(self):
        for key in ("dim", "points"):
            check_int(getattr(self, key), f"icl_regression {key}")
        if self.noise < 0 or (self.ridge is not None and self.ridge < 0):
            raise ValueError("icl_regression noise and ridge must be >= 0")

    @property
    def sequence_length(self):
        return 2 * self.points

    @property
    def input_dim(self):
        return self.dim + 1

    def draw(self, size, generator, dtype=torch.float32):
        """(x (B, n, d), y (B, n)) of ``size`` prompts."""
        d, n = self.dim, self.points
        w = torch.randn(size, d, generator=generator, dtype=torch.float64) / d ** 0.5
        x = torch.randn(size, n, d, generator=generator, dtype=torch.float64)
        y = (x @ w[..., None])[..., 0]
        if self.noise:
            y = y + self.noise * torch.randn(size, n, generator=generator, dtype=torch.float64)
        return x.to(dtype), y.to(dtype)

    def tokens(self, x, y):
        """(x, y) -> (B, 2n, d + 1): query token (x_i, 0), then pair token (x_i, y_i)."""
        B, n, d = x.shape
        out = torch.zeros(B, n, 2, d + 1, dtype=x.dtype)
        out[:, :, :, :d] = x[:, :, None]
        out[:, :, 1, d] = y
        return out.reshape(B, 2 * n, d + 1)

    def batch(self, size, generator, split="train"):
        check_split(split)
        x, y = self.draw(size, generator)
        n = self.points
        targets = torch.zeros(size, 2 * n)
        targets[:, 0::2] = y
        weights = torch.zeros(size, 2 * n)
        weights[:, 0::2] = 1.0
        return {"inputs": self.tokens(x, y), "targets": targets, "weights": weights}

    def build_model(self, mixer, mixer_options, model):
        from attnarena.models import SequenceRegressor

        return SequenceRegressor(self.input_dim, mixer=mixer, mixer_options=mixer_options,
                                 max_len=self.sequence_length,
                                 **{k: model[k] for k in self.model_keys
                                    if model.get(k) is not None})

    def baselines(self, examples: int, seed: int) -> dict:
        """Mean squared error over every prefix of ``examples`` prompts drawn with ``seed``
        (the same prompts as the evaluation of that seed): least squares, ridge, one GD
        step with the best step size, zero. Also the step size."""
        inputs = torch.cat([b["inputs"] for b in self.eval_batches("test", examples, seed)])
        pairs = inputs[:, 1::2].double()  # the pair tokens (x_i, y_i)
        x, y = pairs[..., :self.dim], pairs[..., self.dim]
        ridge = self.ridge if self.ridge is not None else max(self.noise ** 2 * self.dim, 1e-6)
        lstsq, ridged = prefix_solutions(x, y, ridge)
        eta = best_step_size(x, y)
        gd = eta * gd_step_features(x, y)

        def mse(p):
            return float(((p - y) ** 2).mean())

        return {"least_squares": mse(lstsq), "ridge": mse(ridged), "gd_one_step": mse(gd),
                "zero": mse(torch.zeros_like(y)), "gd_step_size": eta}
