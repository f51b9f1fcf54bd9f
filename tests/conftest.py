import os

import pytest
import torch
from hypothesis import settings

import attnarena as aa

settings.register_profile("default", deadline=None, max_examples=25, derandomize=True)
settings.register_profile("thorough", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

torch.set_num_threads(min(2, torch.get_num_threads()))

# Small, test-sized options that exercise a mechanism's own machinery at tiny lengths
# (a window shorter than the sequence, several chunks). New mechanisms work with their
# defaults; an entry here only adds coverage.
TEST_OPTIONS = {
    "local": {"window": 3},
    "linear": {"chunk_size": 4},
    "cosine": {"chunk_size": 4},
    "performer": {"chunk_size": 4, "features": 16},
    "retention": {"chunk_size": 4},
    "gla": {"chunk_size": 4},
    "deltanet": {"chunk_size": 4},
    "gated_deltanet": {"chunk_size": 4},
    "deltaproduct": {"chunk_size": 4, "gated": True, "negative_eigenvalues": True},
    "gsa": {"chunk_size": 4, "slots": 4},
    "ttt_linear": {"mini_batch": 3},
    "latte": {"chunk_size": 4, "latents": 4},
    "soft": {"landmarks": 4},
    "transnormer": {"chunk_size": 4},
    "titans": {"mini_batch": 3},
    "transformer_vq": {"codes": 6, "block": 4},
    "routing": {"clusters": 3},
    "mamba": {"chunk_size": 4, "state_size": 4},
    "mamba2": {"chunk_size": 4, "state_size": 8},
    "mlstm": {"chunk_size": 4},
    "sparse": {"block": 4, "summary": 1},
    "longformer": {"window": 4, "global_tokens": 1},
    "bigbird": {"block": 3, "random_blocks": 1},
    "linformer": {"proj_len": 8, "max_len": 32},
    "nystromformer": {"landmarks": 4, "conv_kernel": 3},
    "synthesizer": {"max_len": 32},
    "agent": {"agents": 4},
    "flatten": {"chunk_size": 4},
    "hedgehog": {"chunk_size": 4},
    "lolcats": {"chunk_size": 4, "window": 3},
    "dilated": {"segment_lengths": (4, 8), "dilation_rates": (1, 2)},
    "reformer": {"chunk_size": 4, "buckets": 4, "rounds": 2},
    "gaam": {"gaussians": 2},
    "sinkhorn": {"block": 4, "max_len": 32},
}


def make_mixer(name, causal=False, dim=16, heads=2, dtype=torch.float32, seed=0, **options):
    torch.manual_seed(seed)
    opts = {**TEST_OPTIONS.get(name, {}), **options}
    return aa.create_mixer(name, dim=dim, heads=heads, causal=causal, **opts).to(dtype).eval()


def pattern_cases():
    """(mixer name, pattern) for every pattern every registered mixer declares."""
    return [(name, p) for name in aa.list_mixers() for p in sorted(aa.mixer_info(name).patterns)]


def pattern_ids():
    return [f"{n}-{p}" for n, p in pattern_cases()]


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


def run_tiny_suite(tmp_path, mixers, train, model="dim = 16, depth = 1, heads = 2",
                   extra="", log=None, **options):
    """Write and run a small copy-task suite over ``mixers`` (by default dim 16, one layer,
    2 heads) with the TOML ``train`` and ``model`` tables' entries and ``extra`` TOML after
    them (more keys of the run group, then other tables); returns (store path, run
    counts)."""
    from attnarena.arena.run.runner import run_suite

    suite = tmp_path / "s.toml"
    names = ", ".join(f'"{m}"' for m in mixers)
    suite.write_text(f'[[runs]]\ntasks = ["copy"]\nmixers = [{names}]\n'
                     f'train = {{ {train} }}\nmodel = {{ {model} }}\n{extra}')
    store = tmp_path / "a.sqlite"
    counts = run_suite(str(suite), store_path=store, out_dir=tmp_path, progress=False,
                       log=log or (lambda line: None), **options)
    return store, counts


@pytest.fixture(autouse=True)
def _in_a_folder_of_its_own(tmp_path, monkeypatch):
    """Every test runs in a temporary folder: a command's default `results/` (the store,
    checkpoints, reports) never lands in the checkout the tests run from."""
    monkeypatch.chdir(tmp_path)


# A two-run suite (softmax and linear on copy) with a small speed sweep: the runner's and
# the store's tests run it.
TINY = """
name = "tiny"
[[runs]]
tasks = ["copy"]
mixers = ["softmax", "linear"]
train = { steps = %(steps)d, eval_every = %(every)d, eval_examples = 64, batch = 8 }
model = { dim = 16, depth = 1, heads = 2 }
[speed]
mixers = ["linear"]
lengths = [32, 64]
passes = ["fwd"]
repeats = 1
"""


def tiny_suite(tmp_path, steps=12, every=4):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY % {"steps": steps, "every": every})
    return str(path)


# -- stores: SQLite and a real PostgreSQL server ----------------------------------------------

@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the whole test session (pgserver's binaries, installed by
    `make test`, or the system's); skipped with the reason where none can be found."""
    import shutil
    import tempfile

    from attnarena.arena.store.local_server import LocalPostgres, find_binaries

    if find_binaries() is None:
        pytest.skip("no PostgreSQL server binaries: pip install 'attnarena[postgres]'")
    folder = tempfile.mkdtemp(prefix="attnarena-pg-")
    server = LocalPostgres(folder, password="pw-for-tests", durable=False).start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


_DATABASES = iter(range(10**6))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request, tmp_path):
    """Where a new, empty store lives: an SQLite file, or a fresh database of the test
    session's PostgreSQL server (its URL)."""
    if request.param == "sqlite":
        return str(tmp_path / "arena.sqlite")
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"t{os.getpid()}_{next(_DATABASES)}")


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (``name`` without .py)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_finish(session):
    """Everything alive once the tests are collected (modules, hypothesis' strategies) is
    moved out of the garbage collector's sight: the full collections that memory
    measurements start with then scan only what the tests make."""
    import gc

    gc.collect()
    gc.freeze()
