"""The speed and memory harness behind ``attnarena speed``.

A sweep is declarative: mixers (with options), lengths and one pass ("fwd", "fwdbwd" or
"decode"). Each case builds the mixer at width heads * head_dim, times the median of
repeated calls and records peak memory. A case that runs out of memory or over the time
budget is recorded as such, and the mixer's longer lengths are recorded as skipped.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from attnarena.arena.measure.conditions import flags
from attnarena.arena.measure.environment import environment, resolve_device
from attnarena.arena.store import stable_id
from attnarena.arena.measure.timer import peak_memory_mb, sync, time_calls
from attnarena._validate import check_int, check_real
from attnarena.options import DTYPES, MixerSpec
from attnarena.registry import create_mixer, mixer_info

PASSES = ("fwd", "fwdbwd", "decode")
@dataclass
class SpeedConfig:
    mixers: list = field(default_factory=list)  # MixerSpec or "name:k=v" strings
    lengths: list = field(default_factory=lambda: [1024, 4096, 16384])
    pass_: str = "fwd"
    batch: int = 1
    heads: int = 4
    head_dim: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    causal: bool = True
    repeats: int = 5
    time_budget: float = 60.0  # seconds for one call; past it the case counts as a timeout

    def __post_init__(self):
        self.mixers = [m if isinstance(m, MixerSpec) else MixerSpec.parse(m)
                       for m in self.mixers]
        if self.pass_ not in PASSES:
            raise ValueError(f"unknown pass {self.pass_!r}; valid: {', '.join(PASSES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        if not self.lengths or not isinstance(self.lengths, (list, tuple)):
            raise ValueError(f"lengths must be a list of positive ints, got {self.lengths!r}")
        for n in self.lengths:
            check_int(n, "each length")
        for name in ("batch", "heads", "head_dim", "repeats"):
            check_int(getattr(self, name), name)
        check_real(self.time_budget, "time_budget")
        if not self.mixers:
            raise ValueError("the speed sweep needs at least one mixer")
        self.lengths = sorted(set(self.lengths))
        self.device = resolve_device(self.device)
        if self.pass_ == "decode" and not self.causal:
            raise ValueError("the decode pass needs causal mixers")


SAMPLE_SECONDS = 0.005  # each timed sample lasts at least this long (a burst of calls)
MAX_BURST = 1000


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text


def _state_bytes(state) -> int:
    """Bytes a decoding state holds: its tensors, and of a cache what it holds (K and V of
    the context, or of the window), not the room allocated ahead."""
    if hasattr(state, "held_bytes"):
        return state.held_bytes()
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    if hasattr(state, "__dict__"):
        return sum(_state_bytes(v) for v in vars(state).values())
    return 0


def softmax_error(mixer, x) -> float | None:
    """||y - y*|| / ||y*||: the mixer's output y against y*, exact softmax attention through
    the mixer's own projections (``softmax_counterpart``), on x at the mixer's current
    weights; None when the mixer has no counterpart or it cannot be computed."""
    if not hasattr(mixer, "softmax_counterpart"):
        return None
    try:
        with torch.no_grad():
            y = mixer(x).double()
            exact = mixer.softmax_counterpart(x).double()
    except Exception as error:  # the exact reference may not fit where the mixer does
        if _is_oom(error):
            return None
        raise
    return float((y - exact).norm() / exact.norm().clamp_min(1e-30))


def _make_call(spec: MixerSpec, length: int, cfg: SpeedConfig):
    """Build the mixer and inputs; return (call, extra) where call() runs one pass."""
    dtype = DTYPES[cfg.dtype]
    dim = cfg.heads * cfg.head_dim
    torch.manual_seed(0)
    mixer = create_mixer(spec.name, dim, heads=cfg.heads, causal=cfg.causal,
                         **dict(spec.options)).to(cfg.device, dtype)
    x = torch.randn(cfg.batch, length, dim, device=cfg.device, dtype=dtype)
    extra = {}
    if cfg.pass_ == "fwd":
        mixer.eval()
        if mixer_info(spec.name).approximates_softmax:
            extra["rel_error"] = softmax_error(mixer, x)

        def call():
            with torch.no_grad():
                mixer(x)
    elif cfg.pass_ == "fwdbwd":
        mixer.train()
        x.requires_grad_(True)

        def call():
            mixer.zero_grad(set_to_none=True)
            x.grad = None
            mixer(x).float().sum().backward()
    else:
        if not mixer_info(spec.name).decodes:
            raise ValueError(f"mixer {spec.name!r} has no recurrent form to decode with")
        mixer.eval()
        with torch.no_grad():
            _, state = mixer.prefill(x)
        extra["state_mb"] = _state_bytes(state) / 2**20
        holder = {"state": state}
        x_t = x[:, -1]

        def call():
            with torch.no_grad():
                _, holder["state"] = mixer.step(x_t, holder["state"])
    return call, extra


def measure_case(spec: MixerSpec, length: int, cfg: SpeedConfig) -> dict:
    """Time and measure one (mixer, length) case; never raises for OOM or timeouts."""
    row = {"mixer": spec.label, "length": length, "pass": cfg.pass_, "batch": cfg.batch,
           "heads": cfg.heads, "head_dim": cfg.head_dim, "dtype": cfg.dtype,
           "causal": cfg.causal, "status": "ok", "median_ms": None, "min_ms": None,
           "q1_ms": None, "q3_ms": None, "repeats": 0, "iterations": 0, "others_share": None,
           "flags": [], "peak_mem_mb": None, "tokens_per_s": None, "state_mb": None,
           "rel_error": None}
    try:
        call, extra = _make_call(spec, length, cfg)
        row.update(extra)
        start = time.perf_counter()
        call()  # warm-up: one-time allocations and lazy set-up stay out of the figures
        sync(cfg.device)
        first = time.perf_counter() - start
        if first > cfg.time_budget:
            row.update(status="timeout", median_ms=first * 1e3, min_ms=first * 1e3)
            return row
        row["peak_mem_mb"] = peak_memory_mb(call, cfg.device)
        repeats = max(1, min(cfg.repeats, int(cfg.time_budget / max(first, 1e-9))))
        # Each sample times a burst of calls lasting at least SAMPLE_SECONDS, so that timer
        # resolution and scheduler noise average out of sub-millisecond calls.
        burst = max(1, min(MAX_BURST, math.ceil(SAMPLE_SECONDS / max(first, 1e-9))))
        timed = time_calls({"case": call}, cfg.device, repeats, burst, warm_up=False)["case"]
        row.update({k: timed[k] for k in ("median_ms", "min_ms", "q1_ms", "q3_ms", "repeats")})
        load_share = timed["others_share"]
        tokens = cfg.batch * (1 if cfg.pass_ == "decode" else length)
        row.update(tokens_per_s=tokens / (row["median_ms"] / 1e3), iterations=burst,
                   others_share=load_share)
        row["flags"] = flags(row)
    except Exception as error:  # one failing case must not stop the sweep
        if _is_oom(error):
            row["status"] = "oom"
        else:
            row["status"] = f"error: {type(error).__name__}: {error}"
    finally:
        if torch.device(cfg.device).type == "cuda":
            torch.cuda.empty_cache()
    return row


def matmul_gflops(device: str = "cpu", dtype: str = "float32", size: int = 1024) -> float:
    """This machine's dense matmul throughput (GFLOP/s), for reading the sweep against."""
    a = torch.randn(size, size, device=device, dtype=DTYPES[dtype])
    b = torch.randn(size, size, device=device, dtype=DTYPES[dtype])
    median_ms = time_calls({"matmul": lambda: a @ b}, device, 5)["matmul"]["median_ms"]
    return 2 * size**3 / (median_ms / 1e3) / 1e9


def speed_case_id(cfg, spec, length, env) -> str:
    key = {"mixer": spec.label, "length": length, "pass": cfg.pass_, "batch": cfg.batch,
           "heads": cfg.heads, "head_dim": cfg.head_dim, "dtype": cfg.dtype,
           "causal": cfg.causal, "device": cfg.device, "hardware": env["hardware"],
           "threads": env["threads"], "torch": env["torch"]}
    if cfg.pass_ == "decode":  # rows from when the state's allocated buffers were counted
        key["state"] = "held"
    return stable_id(key, 16)


def run_speed(cfg: SpeedConfig, progress: bool = True, known=None, on_row=None) -> dict:
    """Run the sweep; returns {"meta": {...}, "rows": [...]} (plain data).

    ``known(spec, length)`` may return an earlier row for a case, which is then reused;
    ``on_row(spec, length, row)`` is called after each newly measured case, and once more
    for each at the end, its row then holding the machine's pace after the sweep too.
    """
    from tqdm import tqdm

    cases = [(spec, n) for spec in cfg.mixers for n in cfg.lengths]
    before = matmul_gflops(cfg.device, cfg.dtype)  # the machine's pace when the sweep began
    rows, fresh = [], []
    stopped = {}  # mixer label -> why longer lengths are skipped
    bar = tqdm(cases, disable=not progress, unit="case", dynamic_ncols=True)
    for spec, length in bar:
        bar.set_description(f"{cfg.pass_} {spec.label} L={length}")
        earlier = known(spec, length) if known else None
        if earlier is not None:
            row = earlier
        elif spec.label in stopped:
            row = {"mixer": spec.label, "length": length, "pass": cfg.pass_,
                   "status": f"skipped ({stopped[spec.label]})"}
        else:
            row = {**measure_case(spec, length, cfg), "matmul_gflops": before}
            fresh.append((spec, length, row))
            if on_row:  # recorded at once: an interrupted sweep keeps what it measured
                on_row(spec, length, row)
        if row["status"] in ("oom", "timeout"):
            stopped[spec.label] = f"{row['status']} at L={length}"
        rows.append(row)
        if row.get("median_ms") is not None:
            bar.set_postfix(ms=f"{row['median_ms']:.2f}")
    after = matmul_gflops(cfg.device, cfg.dtype)
    for spec, length, row in fresh:  # the machine's pace after the sweep, with each row
        row["matmul_gflops_after"] = after
        if on_row:
            on_row(spec, length, row)
    meta = {"config": {**asdict(cfg), "mixers": [m.label for m in cfg.mixers]},
            "environment": environment(cfg.device), "matmul_gflops": before,
            "matmul_gflops_after": after}
    return {"meta": meta, "rows": rows}
