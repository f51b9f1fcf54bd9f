"""Reliability: concurrent processes on one store, divergence, untrusted files, one-line CLI
failures, decoding states and edge shapes, non-finite inputs, the LM's initial loss."""
import math
import os
import pickle
import socket
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch

import attnarena as aa
from attnarena import ops
from attnarena.arena.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from attnarena.arena.config import RunConfig
from attnarena.arena.report import leaderboard_markdown, leaderboard_rows
from attnarena.arena.store import Store, StoreError
from attnarena.arena.suite import SuiteError, load_suite
from attnarena.cli import main
from attnarena.models import CausalLM
from conftest import make_mixer, pattern_cases, run_tiny_suite

SUITE = """
name = "together"
[[runs]]
tasks = ["copy"]
mixers = ["softmax", "linear", "gla", "retention"]
seeds = [0, 1]
train = { steps = 40, eval_every = 20, eval_examples = 32, batch = 8 }
model = { dim = 16, depth = 1, heads = 2 }
"""


def test_concurrent_processes_train_each_run_once(tmp_path):
    suite = tmp_path / "it.toml"
    suite.write_text(SUITE)
    store, out = tmp_path / "arena.sqlite", tmp_path / "out"
    args = [sys.executable, "-m", "attnarena", "run", "--suite", str(suite), "--store",
            str(store), "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-2000:]
    trained = []
    for stdout, _ in outputs:
        line = next(l for l in stdout.splitlines() if l.startswith("runs: "))
        trained.append(int(line.split()[1]))
    assert sum(trained) == 8  # every run trained by exactly one of the two processes
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT status, error, owner FROM runs").fetchall()
    assert len(rows) == 8
    assert all(status == "done" and error is None for status, error, _ in rows)


def _resolved():
    return RunConfig(task="copy", mixer="gla").resolve()


def test_leases_keep_live_owners_and_take_over_dead_ones(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    resolved = _resolved()
    host = socket.gethostname()
    alive = f"{host}:{os.getpid()}:aaaa"
    assert store.claim_run("r", resolved, None, {}, alive)[0] == "claimed"
    assert store.claim_run("r", resolved, None, {}, "other:1:bbbb")[0] == "busy"
    # the holder finishes; nobody else can overwrite the finished run
    assert not store.finish_run("r", {"params": 1}, "other:1:bbbb")
    assert store.finish_run("r", {"params": 1}, alive)
    assert store.claim_run("r", resolved, None, {}, "other:1:bbbb")[0] == "finished"
    assert not store.fail_run("r", "late", "other:1:bbbb")
    assert store.run("r")["status"] == "done" and store.run("r")["error"] is None
    # a process of this host that no longer runs: taken over at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert store.claim_run("s", resolved, None, {}, f"{host}:{dead.pid}:cccc")[0] == "claimed"
    assert store.claim_run("s", resolved, None, {}, alive)[0] == "claimed"
    # another host: busy while its heartbeat is fresh, taken over once it is stale
    assert store.claim_run("t", resolved, None, {}, "far-away:7:dddd")[0] == "claimed"
    assert store.claim_run("t", resolved, None, {}, alive)[0] == "busy"
    assert store.claim_run("t", resolved, None, {}, alive, stale_after=0.0)[0] == "claimed"
    assert store.heartbeat("t", alive) and not store.heartbeat("t", "far-away:7:dddd")


def test_old_stores_are_migrated_and_empty_files_refused(tmp_path):
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:
        db.executescript("""CREATE TABLE runs (id TEXT PRIMARY KEY, suite TEXT, task TEXT NOT
            NULL, mixer TEXT NOT NULL, preset TEXT NOT NULL, seed INTEGER NOT NULL, config TEXT
            NOT NULL, status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
            error TEXT, metrics TEXT, params INTEGER, peak_mem_mb REAL, train_seconds REAL,
            tokens_per_s REAL, environment TEXT, started REAL, finished REAL);""")
        db.execute("INSERT INTO runs (id, task, mixer, preset, seed, config, status) VALUES "
                   "('a', 'copy', 'gla', 'cpu', 0, '{}', 'running')")
    store = Store(old)
    assert store.run("a")["status"] == "running"
    assert store.claim_run("a", _resolved(), None, {}, "me:1:x")[0] == "claimed"  # no owner
    assert store.fail_run("a", "nan", "me:1:x", status="diverged")
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(StoreError, match="empty file"):
        Store(empty)


def test_a_diverging_run_is_recorded_and_never_ranked(tmp_path, capsys):
    store, counts = run_tiny_suite(tmp_path, ["softmax"],
                                   "steps = 6, eval_every = 3, eval_examples = 16, batch = 4, "
                                   "lr = [1e3, 1e-3], warmup = 0")
    assert counts["diverged"] == 1 and counts["trained"] == 1
    db = Store(store)
    assert sorted(r["status"] for r in db.runs()) == ["diverged", "done"]
    assert [r["lr"] for r in leaderboard_rows(db)] == [1e-3]
    board = leaderboard_markdown(db)
    assert "- diverged: copy-softmax" in board and "training diverged at step" in board


@pytest.mark.parametrize("group, name", [
    ('train = { lr = inf }', "train.lr"), ('train = { clip = -1.0 }', "train.clip"),
    ('train = { warmup = -5 }', "train.warmup"), ('train = { lr = "fast" }', "train.lr"),
    ('model = { dim = 0 }', "model.dim"), ('task_options = { length = -3 }', "length"),
    ('train = { weight_decay = -0.1 }', "train.weight_decay"),
    ('model = { dropout = 1.5 }', "model.dropout")])
def test_bad_settings_are_refused_when_the_suite_loads(tmp_path, group, name):
    path = tmp_path / "s.toml"
    path.write_text(f'[[runs]]\ntasks = ["copy"]\nmixers = ["gla"]\n{group}\n')
    with pytest.raises(SuiteError, match=name.replace(".", r"\.")):
        load_suite(str(path))


class _Plant:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_checkpoint_does_not_run_code(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "ck", model, None, {"step": 1, "history": []})
    [folder] = (tmp_path / "ck").glob("step-*")
    marker = tmp_path / "marker"
    torch.save({"step": 1, "evil": _Plant(marker)}, folder / "state.pt")
    with pytest.raises(CheckpointError, match=f"delete that folder.*|{folder}"):
        load_checkpoint(tmp_path / "ck")
    assert not marker.exists()
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=str(folder)):
        load_checkpoint(tmp_path / "ck")


def test_a_planted_cifar_batch_does_not_run_code(tmp_path):
    from attnarena.tasks.image import read_cifar_batch, write_cifar_batch

    marker = tmp_path / "marker"
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Plant(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"refers to io\.open.*refusing"):
        read_cifar_batch(tmp_path / "data_batch_1")
    assert not marker.exists()
    images = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    write_cifar_batch(tmp_path / "test_batch", images, [3, 10])
    with pytest.raises(ValueError, match="test_batch.*labels must be 0-9"):
        read_cifar_batch(tmp_path / "test_batch")


def _cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


def test_cli_failures_are_one_line(tmp_path, capsys):
    listops = tmp_path / "listops"
    listops.mkdir()
    for split in ("train", "val", "test"):
        (listops / f"basic_{split}.tsv").write_text("Source\tTarget\n" + "x" * 200_000 + "\t1\n")
    retrieval = tmp_path / "retrieval"
    retrieval.mkdir()
    for split in ("train", "eval", "test"):
        (retrieval / f"new_aan_pairs.{split}.tsv").write_text("inf\ta\tb\tc\td\n")
    damaged = tmp_path / "damaged.sqlite"
    Store(damaged).close()
    data = bytearray(damaged.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)
    damaged.write_bytes(bytes(data))
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    cases = [
        ["train", "--task", "listops", "--mixer", "gla", "--data", str(listops), "--steps", "1"],
        ["train", "--task", "retrieval", "--mixer", "gla", "--data", str(retrieval)],
        ["report", "--store", str(damaged)],
        ["report", "--store", str(empty)],
        ["train", "--task", "copy", "--mixer", "gla", "--device", "cuda"],
        ["train", "--task", "copy", "--mixer", "gla", "--device", "gpu"],
        ["speed", "--mixers", "gla", "--device", "cuda"],
        ["run", "--device", "cuda"],
        ["train", "--task", "copy", "--mixer", "gla", "--json", str(tmp_path)],
        ["train", "--task", "copy", "--mixer", "gla", "--steps", "1", "--quiet", "--out",
         str(empty / "sub")],
    ]
    for args in cases:
        code, err = _cli(capsys, *args)
        assert code == 2, args
        assert len(err.strip().splitlines()) == 1, (args, err)
        assert err.startswith(f"attnarena {args[0]}: error: ")
        assert "Traceback" not in err
    code, err = _cli(capsys, "--traceback", "report", "--store", str(damaged))
    assert code == 2 and "Traceback" in err


def test_train_with_a_store_records_its_failure(tmp_path, capsys):
    store = tmp_path / "a.sqlite"
    code, err = _cli(capsys, "train", "--task", "copy", "--mixer", "softmax", "--steps", "4",
                     "--lr", "1e9", "--store", str(store), "--quiet", "--out", str(tmp_path))
    assert code == 2 and "diverged" in err
    [run] = Store(store).runs()
    assert run["status"] == "diverged"


DECODERS = [n for n in aa.list_mixers() if aa.mixer_info(n).decodes]


@pytest.mark.parametrize("name", DECODERS)
def test_decoding_states_are_checked_the_same_way(name):
    mixer = make_mixer(name, causal=True)
    x = torch.randn(2, 16)
    fresh, _ = mixer.step(x, None)  # None: a fresh sequence, as with prefill
    expected, _ = mixer.step(x, mixer.init_state(2))
    torch.testing.assert_close(fresh, expected)
    with pytest.raises(ValueError, match="batch size 3 but the input has batch size 2"):
        mixer.step(x, mixer.init_state(3))
    with pytest.raises(TypeError, match="must be what init_state"):
        mixer.step(x, {"something": torch.zeros(2)})
    y, state = mixer.step(torch.randn(0, 16), None)
    assert y.shape == (0, 16) and state is None
    # prefill follows the same rules, whatever fast path the mechanism has
    prompt = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="batch size 3 but the input has batch size 2"):
        mixer.prefill(prompt, mixer.init_state(3))
    prompt[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x holds NaN or infinity \(first at index"):
        mixer.prefill(prompt)


@pytest.mark.parametrize("name, pattern", pattern_cases())
def test_batch_zero_gives_an_empty_output(name, pattern):
    mixer = make_mixer(name, causal=pattern in ("causal", "causal_cross"))
    context = torch.randn(0, 5, 16) if "cross" in pattern else None
    assert mixer(torch.randn(0, 7, 16), context=context).shape == (0, 7, 16)


@pytest.mark.parametrize("name, pattern", pattern_cases())
def test_non_finite_inputs_are_refused(name, pattern):
    mixer = make_mixer(name, causal=pattern in ("causal", "causal_cross"))
    x = torch.randn(2, 9, 16)
    context = torch.randn(2, 6, 16) if "cross" in pattern else None
    for bad in (float("nan"), float("inf")):
        broken = x.clone()
        broken[1, 5, 3] = bad
        with pytest.raises(ValueError, match=r"x holds NaN or infinity \(first at index "
                                             r"\(1, 5, 3\)\)"):
            mixer(broken, context=context)
    if context is not None:
        context[0, 2, 0] = float("nan")
        with pytest.raises(ValueError, match="context holds NaN"):
            mixer(x, context=context)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 5] = False
    if context is None:  # padding may hold anything: it is zeroed before the check
        broken = x.clone()
        broken[1, 5] = float("nan")
        assert torch.isfinite(mixer(broken, mask=keep)).all()


def test_ops_and_options_refuse_what_has_no_meaning():
    empty = torch.randn(1, 2, 0, 4)
    with pytest.raises(ValueError, match="at least one position"):
        ops.linear_attention(empty, empty, empty, causal=True, form="chunk")
    with pytest.raises(ValueError, match="at least one position"):
        ops.gla(empty, empty, empty, log_g=empty, form="chunk")
    with pytest.raises(ValueError, match="at least one position"):
        ops.selective_scan(torch.randn(1, 3, 0), torch.rand(1, 3, 0), -torch.ones(3, 2),
                           torch.randn(1, 2, 0), torch.randn(1, 2, 0))
    with pytest.raises(ValueError, match="delta .* must be >= 0"):
        ops.selective_scan(torch.randn(1, 3, 5), -torch.rand(1, 3, 5), -torch.ones(3, 2),
                           torch.randn(1, 2, 5), torch.randn(1, 2, 5))
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(TypeError, match="input_gate must be a floating-point"):
        ops.mlstm(q, q, q, input_gate=torch.zeros(1, 2, 5, dtype=torch.long),
                  forget_gate=torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match="forget_gate holds NaN"):
        ops.mlstm(q, q, q, input_gate=torch.zeros(1, 2, 5),
                  forget_gate=torch.full((1, 2, 5), float("nan")))
    with pytest.raises(ValueError, match="input_gate holds NaN or inf"):
        ops.mlstm(q, q, q, input_gate=torch.full((1, 2, 5), float("inf")),
                  forget_gate=torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match="dt_rank must be a positive int"):
        aa.create_mixer("mamba", dim=16, dt_rank=0)


@pytest.mark.parametrize("vocab", [16, 1000])
@pytest.mark.parametrize("tied", [False, True])
def test_the_language_models_initial_loss_is_near_ln_vocab(vocab, tied):
    torch.manual_seed(0)
    lm = CausalLM(vocab, dim=64, depth=2, heads=4, mixer="gla", tie_embeddings=tied)
    tokens = torch.randint(0, vocab, (8, 32))
    logits = lm(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
    assert abs(loss.item() - math.log(vocab)) < 0.5


def test_performer_and_reformer_run_in_float16():
    x = torch.randn(2, 11, 16, generator=torch.Generator().manual_seed(0))
    for name in ("performer", "reformer", "flatten"):
        ref = make_mixer(name, causal=True)
        half = make_mixer(name, causal=True, dtype=torch.float16)
        y = half(x.half()).float()
        assert torch.isfinite(y).all(), name
        assert (y - ref(x)).abs().mean() < 0.01 * ref(x).abs().mean() + 0.002, name


def test_an_image_bomb_is_one_clear_error(tmp_path, monkeypatch):
    from PIL import Image

    from attnarena.tasks.pathfinder import read_png

    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1,024 pixels: over twice the limit
    with pytest.raises(ValueError, match="cannot read Pathfinder image .*big.png"):
        read_png(tmp_path / "big.png")


def test_options_that_had_no_check_are_refused():
    with pytest.raises(ValueError, match="levels must be a positive int, got 0"):
        aa.create_mixer("log_linear", dim=16, heads=2, causal=True, levels=0)
    with pytest.raises(ValueError, match="top_k must be a positive int, got 1.5"):
        aa.create_mixer("moh", dim=16, heads=4, top_k=1.5)
    s4d = aa.create_mixer("s4d", dim=16, causal=True)
    assert "chunk_size" not in repr(s4d)  # it takes none


def test_an_encoder_of_depth_zero_takes_a_mask():
    from attnarena.models import EncoderClassifier

    torch.manual_seed(0)
    model = EncoderClassifier(3, vocab_size=10, depth=0, pooling="cls")
    tokens = torch.randint(0, 10, (2, 5))
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[0, -1] = False
    assert model(tokens, mask=keep).shape == (2, 3)
