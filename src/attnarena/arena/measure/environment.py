"""What a measurement ran on: hardware, threads, library versions."""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

from attnarena.arena.store import host_name


@lru_cache(maxsize=None)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_devices() -> list[str]:
    """Device names this machine can run on: cpu, then each CUDA device (and mps)."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(name) -> str:
    """"auto" -> "cuda" when a CUDA device is present, else "cpu"; any other name must be
    one this machine has, or one line says which it has (and how a GPU user installs)."""
    if name is None or name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    available = available_devices()
    if isinstance(name, str) and name in available:
        return name
    hint = ""
    if isinstance(name, str) and name.startswith(("cuda", "gpu")) \
            and not torch.cuda.is_available():
        built = "without CUDA" if torch.version.cuda is None else "with CUDA, but sees no GPU"
        hint = (f"; this torch {torch.__version__} is built {built} (a GPU needs a CUDA "
                "build of torch, installed before attnarena)")
    raise ValueError(f"unknown or unavailable device {name!r}; this machine has: "
                     f"{', '.join(['auto'] + available)}{hint}")


def device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_name()


@lru_cache(maxsize=None)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def scheduler_job() -> dict:
    """The cluster job this process belongs to, when it is one: {"job": id, "array_index":
    index} from ``ATTNARENA_JOB`` / ``ATTNARENA_ARRAY_INDEX`` (set by ``--launcher
    submitit``) or Slurm's ``SLURM_ARRAY_JOB_ID`` (``SLURM_JOB_ID``) / ``SLURM_ARRAY_TASK_ID``."""
    found = {}
    for key, names in (("job", ("ATTNARENA_JOB", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID")),
                       ("array_index", ("ATTNARENA_ARRAY_INDEX", "SLURM_ARRAY_TASK_ID"))):
        value = next((os.environ[n] for n in names if os.environ.get(n)), None)
        if value is not None:
            found[key] = value
    return found


def environment(device: str = "cpu") -> dict:
    return {
        "hardware": device_name(device),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "host": host_name(),
        **scheduler_job(),
    }
