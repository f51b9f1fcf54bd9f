"""In-context linear regression: does one layer of linear self-attention learn one step of
gradient descent? (von Oswald et al. 2023, "Transformers learn in-context by gradient
descent".)

Usage: python benchmarks/icl_regression.py [--dim 10] [--points 10] [--steps 5000]
                                           [--batch 2048] [--lr 1e-3] [--seed 0]

Trains, with the arena's own loop, a one-layer model whose only mixer is the ``linear``
mixer without feature map or normalization (no MLP, no layer norm, no positions), on
noiseless prompts of ``points`` pairs in ``dim`` dimensions, and prints its test MSE over
every prefix next to the closed-form baselines on the same test prompts: least squares,
ridge, one GD step with the best single step size, and zero. The paper's finding is that
the trained model matches one GD step; the script reports the ratio model / GD.
"""
from __future__ import annotations

import argparse
import json

from attnarena.arena.run.config import RunConfig
from attnarena.arena.measure.environment import environment
from attnarena.arena.run.train import train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=32, help="model width")
    parser.add_argument("--examples", type=int, default=8192, help="test prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    config = RunConfig(
        task="icl_regression", mixer="linear", preset="paper", seed=args.seed,
        mixer_options={"feature_map": "identity", "normalize": False},
        task_options={"dim": args.dim, "points": args.points},
        model={"dim": args.width, "depth": 1, "heads": 1, "mlp_dim": 0, "position": "none",
               "norm": False},
        train={"steps": args.steps, "batch": args.batch, "lr": args.lr,
               "eval_examples": args.examples, "eval_every": max(1, args.steps // 10)})
    resolved = config.resolve()
    # 2,000 steps x batch 1,024 took 242 s on an idle 2-core AMD EPYC (2 torch threads)
    minutes = args.steps * args.batch / (2000 * 1024 / 242) / 60
    print(f"training {args.steps} steps x batch {args.batch}: about {minutes:.0f} min on a "
          "2-core CPU (a progress bar follows)", flush=True)
    metrics = train(resolved, progress=True)
    base = metrics["baselines"]
    env = environment("cpu")
    print(f"in-context regression: d={args.dim}, {args.points} points, noiseless, "
          f"{args.examples} test prompts, loss over every prefix")
    print(f"machine: {env.get('hardware')}, {env.get('threads')} threads, torch "
          f"{env.get('torch')}")
    print(f"one-layer linear self-attention, {metrics['params']} parameters, "
          f"{metrics['steps']} steps x batch {args.batch}, {metrics['train_seconds']:.0f} s")
    rows = [("trained LSA (test)", metrics["test_mse"]),
            ("least squares", base["least_squares"]), ("ridge", base["ridge"]),
            (f"one GD step (eta={base['gd_step_size']:.4f})", base["gd_one_step"]),
            ("zero", base["zero"])]
    for name, value in rows:
        print(f"  {name:<32} MSE {value:.4f}")
    ratio = metrics["test_mse"] / base["gd_one_step"]
    print(f"model / one-GD-step = {ratio:.3f} (the paper's finding: about 1; "
          f"within 10%: {'yes' if abs(ratio - 1) <= 0.10 else 'no'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "metrics": {k: v for k, v in metrics.items()
                                                       if k != "history"}}, f, indent=2)


if __name__ == "__main__":
    main()
