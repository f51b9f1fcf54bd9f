"""Hostile inputs, each run as a user would run it, and the verdict on what came back.

    python benchmarks/hostile_inputs.py [--timeout 30] [--only NAME,...]

Each case builds its input in a temporary folder, runs one `attnarena` command (or a few
lines of the Python API) in a fresh process with standard input open, and is judged:

  clean             refused in one line that names what was expected and what was given
  misleading        one line, but it hides the cause (a KeyError, "no transaction", ...)
  traceback         a raw Python traceback
  silently wrong    accepted: a wrong result, a planted state trusted, an input ignored
  hang              no answer within the timeout
  code execution    a model folder's code ran
  data loss         a value in the store is gone
  unbounded work    memory far beyond what the answer needs (over 500 MiB)

Run it against another checkout by putting that checkout's ``src`` first on PYTHONPATH.
Counts per verdict close the output.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

TINY = """name = "tiny"
[[runs]]
tasks = ["copy"]
mixers = ["softmax"]
train = { steps = 4, eval_every = 2, eval_examples = 16, batch = 4 }
model = { dim = 16, depth = 1, heads = 2 }
"""
TRAIN = ["train", "--task", "copy", "--mixer", "gla", "--steps", "4", "--model", "dim=16",
         "--model", "depth=1", "--model", "heads=2", "--quiet"]
CASES = {}


def case(name):
    def wrap(function):
        CASES[name] = function
        return function
    return wrap


def run(argv, tmp, timeout, stdin="y\n", python=None):
    command = [sys.executable, "-c", python] if python else \
        [sys.executable, "-m", "attnarena", *argv]
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, text=True,
                              timeout=timeout, cwd=tmp)
    except subprocess.TimeoutExpired:
        return None
    return done


# exceptions that carry a message written for a user of the Python API
USER_ERRORS = ("ValueError", "TypeError", "CheckpointError", "NonFiniteError", "StoreError",
               "SuiteError", "MissingExtraError")


def one_line(done, *needles) -> str:
    """clean / misleading / traceback / silently wrong, from a finished process. From the
    command line a failure must be one line; from the Python API (a ``python -c`` case) it
    must be an exception of a user-facing type (ValueError, TypeError or the package's own)
    whose message names the problem."""
    if done is None:
        return "hang"
    err = done.stderr.strip()
    last = err.splitlines()[-1] if err else ""
    if "Traceback (most recent call last)" in err:
        kind = last.split(":", 1)[0].rsplit(".", 1)[-1]
        if kind not in USER_ERRORS or not isinstance(done.args, list) or done.args[1] != "-c":
            return "traceback"
    elif done.returncode == 0:
        return "silently wrong"
    return "clean" if all(n.lower() in last.lower() for n in needles) else "misleading"


def api(code: str) -> str:
    return "import attnarena as aa, torch\n" + textwrap.dedent(code)


def _model_folder(tmp):
    from attnarena.pretrained import model_directory
    import shutil

    folder = tmp / "model"
    shutil.copytree(model_directory("minilm"), folder)
    return folder


@case("model folder with auto_map, compress")
def _(tmp, timeout):
    folder = _model_folder(tmp)
    (folder / "evil.py").write_text(f"open({str(tmp / 'marker')!r}, 'w').write('ran')\n"
                                    "from transformers import BertModel as EvilModel\n"
                                    "from transformers import BertConfig as EvilConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    done = run(["compress", "--model", str(folder), "--method", "magnitude"], tmp, timeout)
    return "code execution" if (tmp / "marker").exists() else one_line(done, "custom code")


@case("report on an older store with a user's column")
def _(tmp, timeout):
    store = tmp / "results" / "arena.sqlite"
    store.parent.mkdir()
    with sqlite3.connect(store) as db:  # the layout before leases, plus a column of the user's
        db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, suite TEXT, task TEXT NOT NULL, "
                   "mixer TEXT NOT NULL, preset TEXT NOT NULL, seed INTEGER NOT NULL, config "
                   "TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('running', 'done', "
                   "'failed')), error TEXT, metrics TEXT, params INTEGER, peak_mem_mb REAL, "
                   "train_seconds REAL, tokens_per_s REAL, environment TEXT, started REAL, "
                   "finished REAL, notes TEXT)")
        db.execute("INSERT INTO runs (id, task, mixer, preset, seed, config, status, notes) "
                   "VALUES ('a', 'copy', 'gla', 'cpu', 0, '{}', 'failed', 'mine')")
    done = run(["report"], tmp, timeout)
    with sqlite3.connect(store) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(runs)")]
    if "notes" not in columns:
        return "data loss"
    return "clean" if done is not None and done.returncode == 0 else one_line(done, "migrate")


@case("suite of 10^9 runs")
def _(tmp, timeout):
    values = ", ".join(str(i) for i in range(1000))
    widths = ", ".join(str(16 + i) for i in range(1000))
    (tmp / "s.toml").write_text(f'[[runs]]\ntasks = ["copy"]\nmixers = ["softmax"]\n'
                                f'seeds = [{values}]\ntrain = {{ warmup = [{values}] }}\n'
                                f'model = {{ dim = [{widths}] }}\n')
    return one_line(run(["run", "--suite", "s.toml"], tmp, timeout), "runs")


@case("pathfinder with 10^8 images")
def _(tmp, timeout):
    done = run(["data", "pathfinder", "--out", "pf", "--option",
                "train_examples=100000000"], tmp, timeout)
    return one_line(done, "GiB")


def _planted(tmp, timeout, change):
    (tmp / "out").mkdir()
    code = api(f"""
        from attnarena.arena.run.config import RunConfig
        from attnarena.arena.run.artifacts import build_run_model
        from attnarena.arena.run.checkpoint import save_checkpoint
        config = RunConfig(task="copy", mixer="gla", model={{"dim": 16, "depth": 1, "heads": 2}},
                           train={{"steps": 4}})
        model = build_run_model(config.resolve())
        opt = torch.optim.AdamW(model.parameters())
        state = {{"step": 2, "history": [{{"step": 2}}], "best_score": 0.0,
                  "train_seconds": 1.0, "tokens": 8, "optimizer": opt.state_dict(),
                  "rng": torch.get_rng_state()}}
        {change}
        save_checkpoint({str(tmp / 'out' / 'checkpoints')!r} + "/" + config.run_id(), model,
                        None, state)
    """)
    run([], tmp, timeout, python=code)
    return run([*TRAIN, "--out", "out", "--store", "a.sqlite"], tmp, timeout * 4)


@case("checkpoint planted at step 10^9")
def _(tmp, timeout):
    done = _planted(tmp, timeout, 'state["step"] = 10**9')
    return one_line(done, "outside the run")


@case("checkpoint planted at step -50")
def _(tmp, timeout):
    return one_line(_planted(tmp, timeout, 'state["step"] = -50'), "outside the run")


@case("checkpoint without optimizer state")
def _(tmp, timeout):
    return one_line(_planted(tmp, timeout, 'state.pop("optimizer")'), "lacks optimizer")


@case("run --mixers ''")
def _(tmp, timeout):
    (tmp / "s.toml").write_text(TINY)
    return one_line(run(["run", "--suite", "s.toml", "--mixers", ""], tmp, timeout * 4),
                    "no names")


@case("disk full under a claim")
def _(tmp, timeout):
    code = api("""
        from attnarena.arena.run.config import RunConfig
        from attnarena.arena.store import Store
        store = Store("a.sqlite")
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")
        resolved = {**RunConfig(task="copy", mixer="gla").resolve(), "x": "x" * 200000}
        try:
            store.claim_run("a", resolved, None, {}, "me:1:x")
        except Exception as error:
            raise SystemExit(f"error: {error}")
    """)
    return one_line(run([], tmp, timeout, python=code), "full", "a.sqlite")


@case("recipe table: distill with steps = 300")
def _(tmp, timeout):
    (tmp / "r.toml").write_text('[[recipe]]\nmethod = "distill"\nsteps = 300\n')
    done = run(["compress", "no-such-run", "--recipes", "r.toml"], tmp, timeout)
    return one_line(done, "no-such-run")


def _saved_run(tmp, timeout):
    run([*TRAIN, "--out", "out"], tmp, timeout * 4)
    return next((tmp / "out" / "runs").iterdir())


@case("saved run: a weight of the wrong shape")
def _(tmp, timeout):
    folder = _saved_run(tmp, timeout)
    code = api(f"""
        from safetensors.torch import load_file, save_file
        path = {str(folder / 'model.safetensors')!r}
        w = load_file(path)
        name = next(k for k, v in w.items() if v.dim() == 2)
        w[name] = w[name][:1]
        save_file(w, path)
        aa.load_run({str(folder)!r})
    """)
    return one_line(run([], tmp, timeout, python=code), "shape")


@case("saved run: config without a task")
def _(tmp, timeout):
    folder = _saved_run(tmp, timeout)
    config = json.loads((folder / "config.json").read_text())
    config.pop("task")
    (folder / "config.json").write_text(json.dumps(config))
    return one_line(run([], tmp, timeout, python=api(f"aa.load_run({str(folder)!r})")),
                    "task")


@case("saved run: dim = '64'")
def _(tmp, timeout):
    folder = _saved_run(tmp, timeout)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["dim"] = "64"
    (folder / "config.json").write_text(json.dumps(config))
    return one_line(run([], tmp, timeout, python=api(f"aa.load_run({str(folder)!r})")),
                    "dim")


@case("saved run: float64 weights")
def _(tmp, timeout):
    folder = _saved_run(tmp, timeout)
    code = api(f"""
        from safetensors.torch import load_file, save_file
        path = {str(folder / 'model.safetensors')!r}
        save_file({{k: v.double() for k, v in load_file(path).items()}}, path)
        aa.load_run({str(folder)!r})
    """)
    return one_line(run([], tmp, timeout, python=code), "float64")


@case("saved run: NaN weights")
def _(tmp, timeout):
    folder = _saved_run(tmp, timeout)
    code = api(f"""
        from safetensors.torch import load_file, save_file
        path = {str(folder / 'model.safetensors')!r}
        save_file({{k: torch.full_like(v, float('nan')) for k, v in load_file(path).items()}},
                  path)
        aa.load_run({str(folder)!r})
    """)
    return one_line(run([], tmp, timeout, python=code), "nan")


@case("deeply nested suite TOML")
def _(tmp, timeout):
    (tmp / "s.toml").write_text("x = " + "[" * 100000 + "]" * 100000 + "\n")
    return one_line(run(["run", "--suite", "s.toml"], tmp, timeout), "s.toml")


@case("suite with 300,000 unknown keys")
def _(tmp, timeout):
    keys = "\n".join(f"k{i} = 1" for i in range(300000))
    (tmp / "s.toml").write_text(f'[[runs]]\ntasks = ["copy"]\nmixers = ["softmax"]\n{keys}\n')
    done = run(["run", "--suite", "s.toml"], tmp, timeout)
    if done is not None and len(done.stderr) > 2000:
        return "misleading"
    return one_line(done, "unknown")


@case("a method option given twice")
def _(tmp, timeout):
    return one_line(run(["compress", "x", "--method", "magnitude sparsity=0.5 sparsity=0.9"],
                        tmp, timeout), "twice")


for _name in ("softmax", "local", "mamba2", "deltanet"):
    def _state(tmp, timeout, name=_name):
        code = api(f"""
            opts = {{"window": 4}} if {name!r} == "local" else {{}}
            a = aa.create_mixer({name!r}, dim=16, heads=2, causal=True, **opts)
            b = aa.create_mixer({name!r}, dim=32, heads=4, causal=True, **opts)
            a.step(torch.randn(2, 16), b.init_state(2))
        """)
        return one_line(run([], tmp, timeout, python=code), "another mixer")
    case(f"{_name}: a state from another width")(_state)

for _name in ("softmax", "local", "moh"):
    def _nan(tmp, timeout, name=_name):
        code = api(f"""
            opts = {{"window": 4}} if {name!r} == "local" else {{}}
            a = aa.create_mixer({name!r}, dim=16, heads=2, causal=True, **opts)
            s = a.init_state(2)
            for _ in range(3):
                _, s = a.step(torch.randn(2, 16), s)
            s.k.fill_(float("nan")); s.v.fill_(float("nan"))
            y, _ = a.step(torch.randn(2, 16), s)
        """)
        return one_line(run([], tmp, timeout, python=code), "nan")
    case(f"{_name}: a NaN-filled KV cache")(_nan)


@case("softmax: a bfloat16 cache into a float32 model")
def _(tmp, timeout):
    code = api("""
        a = aa.create_mixer("softmax", dim=16, heads=2, causal=True)
        a.step(torch.randn(2, 16), a.init_state(2, dtype=torch.bfloat16))
    """)
    return one_line(run([], tmp, timeout, python=code), "bfloat16")


def _swapped(tmp, timeout, change):
    code = api(f"""
        import json
        from attnarena.pretrained import load_pretrained, swap_attention
        e = load_pretrained("minilm")
        swap_attention(e.model, "hedgehog", layers=[1])
        e.save("saved")
        path = "saved/attnarena_swap.json"
        r = json.load(open(path))
        {change}
        json.dump(r, open(path, "w"))
    """)
    run([], tmp, timeout * 4, python=code)
    return one_line(run([], tmp, timeout, python=api("""
        from attnarena.pretrained import load_pretrained
        load_pretrained("saved")
    """)), "attnarena_swap.json")


@case("swap record: layers = '1e3'")
def _(tmp, timeout):
    return _swapped(tmp, timeout, 'r["layers"] = "1e3"')


@case("swap record: no options")
def _(tmp, timeout):
    return _swapped(tmp, timeout, 'r["layers"]["1"].pop("options")')


@case("swap record: feature_size = 10**9")
def _(tmp, timeout):
    return _swapped(tmp, timeout, 'r["layers"]["1"]["options"]["feature_size"] = 10**9')


@case("compressed.json with config: null")
def _(tmp, timeout):
    (tmp / "c").mkdir()
    (tmp / "c" / "compressed.json").write_text('{"config": null, "recipe": [], "reports": []}')
    code = api("from attnarena.arena.deploy.compressed import load_compressed\n"
               "load_compressed('c')")
    return one_line(run([], tmp, timeout, python=code), "compressed.json")


for _name in ("log_linear", "mamba", "mamba2", "retention"):
    def _huge(tmp, timeout, name=_name):
        code = api(f"""
            m = aa.create_mixer({name!r}, dim=16, heads=2, causal=True)
            y = m(torch.randn(1, 8, 16) * 1e10)
            print(bool(torch.isfinite(y).all()))
        """)
        done = run([], tmp, timeout, python=code)
        if done is not None and done.returncode == 0 and done.stdout.strip() == "True":
            return "clean"  # stays finite: the other half of the contract
        return one_line(done, "overflowed")
    case(f"{_name}: finite inputs scaled by 1e10")(_huge)


@case("train --option window=abc")
def _(tmp, timeout):
    done = run(["train", "--task", "copy", "--mixer", "local", "--option", "window=abc",
                "--store", "a.sqlite", "--quiet"], tmp, timeout * 2)
    left = (tmp / "a.sqlite").exists() and sqlite3.connect(tmp / "a.sqlite").execute(
        "SELECT count(*) FROM runs").fetchone()[0]
    return "silently wrong" if left else one_line(done, "window")


@case("speed --time-budget -1")
def _(tmp, timeout):
    return one_line(run(["speed", "--mixers", "softmax", "--lengths", "16",
                         "--time-budget", "-1"], tmp, timeout), "time_budget")


@case("report --output FILE (Markdown)")
def _(tmp, timeout):
    (tmp / "s.toml").write_text(TINY)
    run(["run", "--suite", "s.toml", "--quiet"], tmp, timeout * 4)
    done = run(["report", "--output", "board.md"], tmp, timeout)
    return "clean" if (tmp / "board.md").exists() else one_line(done) if done is None or \
        done.returncode else "silently wrong"


@case("closed standard output")
def _(tmp, timeout):
    done = subprocess.run(f"{sys.executable} -m attnarena list >&-", shell=True, cwd=tmp,
                          capture_output=False, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)
    return one_line(done, "closed")


@case("a 12000 x 12000 Pathfinder image")
def _(tmp, timeout):
    from PIL import Image

    root = tmp / "pf" / "curv_contour_length_14"
    (root / "imgs" / "0").mkdir(parents=True)
    (root / "metadata").mkdir()
    Image.new("L", (12000, 12000)).save(root / "imgs" / "0" / "sample_0.png")
    (root / "metadata" / "0.npy").write_text("imgs/0 sample_0.png 0 1\n")
    code = api("""
        import resource
        from attnarena.tasks import create_task
        try:
            create_task("pathfinder", data_dir="pf").split("train")
        finally:
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)  # MiB
    """)
    done = run([], tmp, timeout, python=code)
    if done is not None and done.stdout.strip() and int(done.stdout.split()[-1]) > 500:
        return "unbounded work"  # the whole image decoded before its size was checked
    return one_line(done, "32 x 32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds for one command before it counts as a hang")
    parser.add_argument("--only", default=None, help="comma-separated case names")
    args = parser.parse_args()
    chosen = [n for n in CASES if not args.only or n in args.only.split(",")]
    counts = collections.Counter()
    for name in chosen:
        with tempfile.TemporaryDirectory() as folder:
            try:
                verdict = CASES[name](Path(folder), args.timeout)
            except Exception as error:  # noqa: BLE001  (a case that could not be set up)
                verdict = f"setup failed: {type(error).__name__}: {error}"[:100]
        counts[verdict] += 1
        print(f"{verdict:<16} {name}", flush=True)
    print(", ".join(f"{n} {v}" for v, n in counts.most_common()))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
