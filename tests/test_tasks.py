"""Tasks: generators against independent checks, readers against fixtures written here in
the real on-disk formats, and every task through the training loop."""
from __future__ import annotations

import pickle
import random
import statistics
from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnarena.tasks import create_task, list_tasks, listops, pathfinder
from attnarena.tasks.regression import best_step_size, gd_step_features, prefix_solutions

# ListOps -------------------------------------------------------------------------------------

def stack_evaluate(source: str) -> int:
    """An evaluator of the bracketed text alone: push operators and digits, reduce at ']'."""
    stack = []
    for token in source.replace("(", " ").replace(")", " ").split():
        if token == "]":
            args = []
            while not isinstance(stack[-1], str):
                args.append(stack.pop())
            op = stack.pop()
            args.reverse()
            if op == "[MIN":
                stack.append(min(args))
            elif op == "[MAX":
                stack.append(max(args))
            elif op == "[SM":
                stack.append(sum(args) % 10)
            else:  # [MED: the median, the two middles' mean truncated for even counts
                s = sorted(args)
                n = len(s)
                stack.append(s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2)
        elif token.startswith("["):
            stack.append(token)
        else:
            stack.append(int(token))
    assert len(stack) == 1
    return stack[0]


def test_listops_labels_match_a_stack_evaluator_on_thousands_of_trees():
    rng = random.Random(7)
    checked = 0
    while checked < 3000:
        tree, length = listops.generate_tree(rng, max_depth=6, max_args=5)
        source = listops.tree_to_string(tree)
        assert stack_evaluate(source) == listops.evaluate_tree(tree)
        assert len(listops.tokenize(source)) == length == listops.tree_length(tree)
        checked += 1


def test_listops_writer_form_and_median_truncation():
    assert listops.tree_to_string(("[MAX", [2, 9])) == "( ( ( [MAX 2 ) 9 ) ] )"
    assert listops.evaluate_tree(("[MED", [2, 5, 1, 8])) == 3  # median 3.5
    assert listops.evaluate_tree(("[MED", [1, 2])) == 1
    assert listops.evaluate_tree(("[SM", [9, 8, 7])) == 4
    # "]" is its own token; parentheses vanish
    ids = listops.tokenize("( ( ( [MAX 2 ) 9 ) ] )")
    assert ids == [listops.TOKEN_IDS[t] for t in ("[MAX", "2", "9", "]")]
    assert listops.tokenize("[FIRST 3 ]")[0] == listops.OOV


def test_listops_generated_set_respects_the_bounds():
    trees = listops.generate_dataset(150, seed=3, min_length=500, max_length=2000)
    lengths = [listops.tree_length(t) for t in trees]
    assert all(500 < n < 2000 for n in lengths)
    assert len({listops.tree_to_string(t) for t in trees}) == len(trees)  # no duplicates
    assert 700 < statistics.mean(lengths) < 1600  # not crowded against one bound
    again = listops.generate_dataset(150, seed=3, min_length=500, max_length=2000)
    assert [listops.tree_to_string(t) for t in again] == [listops.tree_to_string(t)
                                                          for t in trees]
    labels = {listops.evaluate_tree(t) for t in trees}
    assert len(labels) >= 6


def write_lra_listops(folder):
    """Three TSVs as LRA's release has them (header, bracketed sources, digit targets)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"train": [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("( ( ( ( [SM 4 ) 8 ) 9 ) ] )", 1)],
            "val": [("( ( ( [MIN 2 ) 9 ) ] )", 2)],
            "test": [("( ( ( ( ( [MED 1 ) 2 ) 8 ) 9 ) ] )", 5)]}
    for split, lines in rows.items():
        text = "Source\tTarget\n" + "".join(f"{s}\t{t}\n" for s, t in lines)
        (folder / f"basic_{split}.tsv").write_text(text)
    return rows


def test_listops_reads_lra_release_files(tmp_path):
    rows = write_lra_listops(tmp_path / "listops-1000")
    task = create_task("listops", data_dir=str(tmp_path / "listops-1000"), max_tokens=8)
    task.check_data()
    batch = next(task.eval_batches("train", 0, seed=0))
    assert batch["labels"].tolist() == [9, 1]
    assert batch["inputs"].shape == (2, 8) and batch["mask"].sum(1).tolist() == [4, 5]
    assert [stack_evaluate(s) for s, _ in rows["test"]] == [t for _, t in rows["test"]]
    with pytest.raises(ValueError, match="basic_val.tsv"):
        (tmp_path / "listops-1000" / "basic_val.tsv").unlink()
        create_task("listops", data_dir=str(tmp_path / "listops-1000")).check_data()
    bad = tmp_path / "bad"
    write_lra_listops(bad)
    (bad / "basic_train.tsv").write_text("src\ttgt\n1\t1\n")
    with pytest.raises(ValueError, match="header 'Source<TAB>Target'"):
        create_task("listops", data_dir=str(bad)).split("train")


def test_listops_writer_round_trips(tmp_path):
    task = create_task("listops", train_examples=20, val_examples=5, test_examples=5,
                       min_length=10, max_length=60, max_tokens=60)
    task.write_data(tmp_path)
    read = listops.read_tsv(tmp_path / "basic_train.tsv")
    assert len(read) == 20
    assert all(stack_evaluate(s) == t for s, t in read)
    from_disk = create_task("listops", data_dir=str(tmp_path), max_tokens=60)
    assert [e[1] for e in from_disk.split("test")] == [e[1] for e in task.split("test")]


# Text and Retrieval ------------------------------------------------------------------------

def write_aclimdb(root, reviews):
    for (split, label), texts in reviews.items():
        folder = root / "aclImdb" / split / label
        folder.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(texts):
            (folder / f"{i}_{7 if label == 'pos' else 2}.txt").write_bytes(text)


def test_text_reads_aclimdb_bytes(tmp_path):
    write_aclimdb(tmp_path, {("train", "pos"): [b"Great fun", b"Loved it!"],
                             ("train", "neg"): [b"Dull\xc3\xa9"],
                             ("test", "pos"): [b"Fine"], ("test", "neg"): [b"Bad"]})
    task = create_task("text", data_dir=str(tmp_path), max_length=6)
    train = task.split("train")
    assert sorted(label for _, label in train) == [0, 1, 1]
    batch = task.collate(train)
    first = batch["inputs"][0]  # negatives first: b"Dull\xc3\xa9" cut to 6 bytes
    assert first[:6].tolist() == [b + 1 for b in b"Dull\xc3\xa9"[:6]]
    assert batch["mask"].sum(1).tolist() == [6, 6, 6]
    assert sorted(task.split("val")) == sorted(task.split("test"))  # LRA validated on test
    with pytest.raises(ValueError, match="train/pos"):
        create_task("text", data_dir=str(tmp_path / "aclImdb" / "train")).check_data()
    with pytest.raises(ValueError, match="--data DIR"):
        create_task("text").check_data()


def write_aan(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "eval", "test"):
        with open(folder / f"new_aan_pairs.{name}.tsv", "w") as f:
            for label, a, b in rows:
                f.write(f"{label}\tid{len(a)}\tid{len(b)}\t{a}\t{b}\n")


def test_retrieval_reads_lra_tsvs_and_builds_both_heads(tmp_path):
    write_aan(tmp_path, [("1.0", "paper one \"quoted\"", "paper two"), ("0", "x", "y z")])
    task = create_task("retrieval", data_dir=str(tmp_path), max_length=16)
    batch = task.collate(task.split("train"))
    assert batch["labels"].tolist() == [1, 0]
    assert batch["mask"].sum(1).tolist() == [16, 1]  # first document cut to 16 bytes
    assert batch["mask2"].sum(1).tolist() == [9, 3]
    for combine, width in (("paper", 4), ("concat", 2)):
        task = create_task("retrieval", data_dir=str(tmp_path), max_length=16,
                           combine=combine)
        model = task.build_model("softmax", {}, {"dim": 16, "depth": 1, "heads": 2})
        assert model.classifier[0].in_features == width * 16
        loss, stats = task.score(model, batch)
        assert loss.requires_grad and stats["count"] == 2
    with open(tmp_path / "new_aan_pairs.eval.tsv", "a") as f:
        f.write("1\tonly three\tfields\n")
    with pytest.raises(ValueError, match="expected 5 tab-separated fields"):
        create_task("retrieval", data_dir=str(tmp_path)).split("val")


def test_dual_encoder_ignores_padding():
    from attnarena.models import DualEncoder

    torch.manual_seed(0)
    model = DualEncoder(2, vocab_size=20, dim=16, depth=1, heads=2, max_len=12).eval()
    a = torch.randint(1, 20, (1, 5))
    b = torch.randint(1, 20, (1, 7))
    padded_a = torch.cat([a, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask_a = torch.tensor([[True] * 5 + [False] * 4])
    torch.testing.assert_close(model(a, b), model(padded_a, b, mask=mask_a))


# Image ---------------------------------------------------------------------------------------

def write_cifar(folder, n=10, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, f, protocol=2)
        batches[name] = (data, labels)
    return batches


def test_image_reads_cifar_pickles_as_grayscale(tmp_path):
    batches = write_cifar(tmp_path / "cifar-10-batches-py")
    task = create_task("image", data_dir=str(tmp_path))
    data, labels = batches["test_batch"]
    test = task.collate(task.split("test"))
    r, g, b = (data[:, i * 1024:(i + 1) * 1024].astype(float) for i in range(3))
    want = np.floor(0.2989 * r + 0.5870 * g + 0.1140 * b)
    assert test["inputs"].tolist() == want.astype(int).tolist()
    assert test["labels"].tolist() == labels
    assert len(task.split("train")) == 45 and len(task.split("val")) == 5  # 90/10
    val_labels = batches["data_batch_5"][1][5:]
    assert [e[1] for e in task.split("val")] == val_labels
    pooled = create_task("image", data_dir=str(tmp_path), pool=2)
    assert pooled.collate(pooled.split("test"))["inputs"].shape == (10, 256)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3"):
        create_task("image", data_dir=str(tmp_path)).split("train")


# Pathfinder ----------------------------------------------------------------------------------

def connected(image, a, b) -> bool:
    """Flood fill over drawn (nonzero) pixels, 8-neighbours, from pixel a to pixel b."""
    on = image > 0
    size = on.shape[0]
    (ax, ay), (bx, by) = a, b
    seen = np.zeros_like(on)
    queue = deque([(ay, ax)])
    seen[ay, ax] = True
    while queue:
        y, x = queue.popleft()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                yy, xx = y + dy, x + dx
                if 0 <= yy < size and 0 <= xx < size and on[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    queue.append((yy, xx))
    return bool(seen[by, bx])


@pytest.mark.parametrize("size,length,count", [(32, 14, 150), (32, 6, 60), (64, 9, 20)])
def test_pathfinder_labels_agree_with_flood_fill(size, length, count):
    settings_ = pathfinder.PathfinderSettings(size=size, contour_length=length,
                                              distractor_length=max(1, length // 3))
    rng = np.random.default_rng(size + length)
    for i in range(count):
        label = i % 2
        image, info = pathfinder.generate_image(rng, label, settings_)
        assert image.shape == (size, size) and image.dtype == np.uint8
        a, b = (tuple(int(v) for v in np.round(m)) for m in info["markers"])
        assert image[a[1], a[0]] > 0 and image[b[1], b[0]] > 0
        assert connected(image, a, b) == bool(label)
        assert len(info["contours"]) >= 2  # both long snakes, always


def test_pathfinder_reads_lra_layout(tmp_path):
    from PIL import Image

    root = tmp_path / "pathfinder32" / "curv_contour_length_14"
    (root / "metadata").mkdir(parents=True)
    lines, pixels = [], []
    for folder in range(2):
        (root / "imgs" / str(folder)).mkdir(parents=True)
        for k in range(5):
            array = np.full((32, 32), 10 * folder + k, dtype=np.uint8)
            Image.fromarray(array).save(root / "imgs" / str(folder) / f"sample_{k}.png")
            lines.append((folder, f"imgs/{folder} sample_{k}.png {k} {k % 2} 1.0 14 4 2 2"))
            pixels.append((10 * folder + k, k % 2))
    for folder in range(2):
        text = "\n".join(line for f, line in lines if f == folder) + "\n"
        (root / "metadata" / f"{folder}.npy").write_text(text)
    task = create_task("pathfinder", data_dir=str(tmp_path / "pathfinder32"))
    got = [(int(e[0][0, 0]), e[1]) for s in ("train", "val", "test") for e in task.split(s)]
    assert got == pixels  # metadata order, 80/10/10
    assert [len(task.split(s)) for s in ("train", "val", "test")] == [8, 1, 1]
    batch = task.collate(task.split("train"))
    assert batch["inputs"].shape == (8, 1024)
    # the folder holds another difficulty: the error says which, and how to read it
    with pytest.raises(ValueError, match="holds difficulty curv_contour_length_14, not "
                                         "curv_baseline; read it with --preset paper"):
        create_task("pathfinder", data_dir=str(tmp_path / "pathfinder32"),
                    difficulty="curv_baseline").check_data()
    with pytest.raises(ValueError, match="curv_baseline/metadata"):
        create_task("pathfinder", data_dir=str(tmp_path),
                    difficulty="curv_baseline").check_data()
    (root / "metadata" / "1.npy").write_text("imgs/1 sample_0.png 0\n")
    with pytest.raises(ValueError, match="label 0 or 1"):
        create_task("pathfinder", data_dir=str(tmp_path / "pathfinder32")).split("train")


def test_pathfinder_writer_round_trips(tmp_path):
    task = create_task("pathfinder", difficulty="curv_baseline", train_examples=8,
                       val_examples=1, test_examples=1)
    task.write_data(tmp_path)
    pngs = sorted((tmp_path / "curv_baseline" / "imgs" / "0").glob("*.png"))
    assert len(pngs) == 10
    read = create_task("pathfinder", data_dir=str(tmp_path), difficulty="curv_baseline")
    for split in ("train", "val", "test"):
        for (x, lx), (y, ly) in zip(read.split(split), task.split(split)):
            assert np.array_equal(x, y) and lx == ly


# In-context regression -----------------------------------------------------------------------

@given(st.integers(1, 6), st.integers(2, 9), st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_one_gd_step_matches_autograd(d, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(3, n, generator=g, dtype=torch.float64)
    eta = 0.37
    want = torch.zeros(3, n, dtype=torch.float64)
    for b in range(3):
        for i in range(n):
            w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
            loss = 0.5 * ((x[b, :i] @ w - y[b, :i]) ** 2).sum()
            (grad,) = torch.autograd.grad(loss, w, allow_unused=True) if i else (None,)
            step = -eta * grad if grad is not None else torch.zeros(d, dtype=torch.float64)
            want[b, i] = x[b, i] @ step
    torch.testing.assert_close(eta * gd_step_features(x, y), want)


def test_regression_baselines_are_their_closed_forms():
    task = create_task("icl_regression", dim=4, points=8, noise=0.1)
    x, y = task.draw(64, torch.Generator().manual_seed(0), dtype=torch.float64)
    eta = best_step_size(x, y)

    def gd_loss(e):
        return float(((e * gd_step_features(x, y) - y) ** 2).mean())

    assert gd_loss(eta) <= min(gd_loss(eta * 0.99), gd_loss(eta * 1.01))
    lstsq, ridged = prefix_solutions(x, y, ridge=0.5)
    b, i = 5, 6  # more pairs than dimensions: the ordinary least-squares solution
    w = torch.linalg.solve(x[b, :i].T @ x[b, :i], x[b, :i].T @ y[b, :i])
    torch.testing.assert_close(lstsq[b, i], x[b, i] @ w)
    w = torch.linalg.solve(x[b, :i].T @ x[b, :i] + 0.5 * torch.eye(4), x[b, :i].T @ y[b, :i])
    torch.testing.assert_close(ridged[b, i], x[b, i] @ w)
    base = task.baselines(300, seed=11)
    # (with noise, minimum-norm least squares blows up near as many pairs as dimensions)
    assert base["ridge"] < base["gd_one_step"] < base["zero"]
    assert abs(base["zero"] - (1 + 0.01)) < 0.2  # Var(y) = |w|^2 + noise^2 ~ 1.01
    clean = create_task("icl_regression", dim=4, points=8).baselines(300, seed=11)
    assert clean["least_squares"] < clean["gd_one_step"] < clean["zero"]


def test_regression_batch_layout():
    task = create_task("icl_regression", dim=3, points=4)
    batch = task.batch(2, torch.Generator().manual_seed(0))
    inputs = batch["inputs"]
    assert inputs.shape == (2, 8, 4)
    assert torch.equal(inputs[:, 0::2, :3], inputs[:, 1::2, :3])  # query then pair token
    assert (inputs[:, 0::2, 3] == 0).all()  # the query hides y
    torch.testing.assert_close(inputs[:, 1::2, 3], batch["targets"][:, 0::2])
    assert batch["weights"][:, 1::2].sum() == 0


# Selective copying, induction heads ----------------------------------------------------------

def test_selective_copy_targets_are_the_data_tokens_in_order():
    task = create_task("selective_copy", vocab=10, length=30, tokens=5)
    batch = task.batch(16, torch.Generator().manual_seed(0))
    for inputs, targets, weights in zip(batch["inputs"], batch["targets"], batch["weights"]):
        data = inputs[:30][inputs[:30] >= 2]
        assert data.tolist() == targets[30:].tolist()
        assert (inputs[30:] == 1).all() and weights.sum() == 5 and weights[30:].all()


def test_induction_heads_target_follows_the_trigger():
    task = create_task("induction_heads", vocab=8, length=20, test_length=40)
    for split, length in (("train", 20), ("test", 40)):
        batch = task.batch(16, torch.Generator().manual_seed(1), split)
        assert batch["inputs"].shape == (16, length)
        for inputs, targets in zip(batch["inputs"], batch["targets"]):
            triggers = (inputs == 0).nonzero()[:, 0].tolist()
            assert len(triggers) == 2 and triggers[1] == length - 1
            assert targets[-1] == inputs[triggers[0] + 1] != 0


# Every task through `attnarena train --preset cpu` ------------------------------------------

def small_data(tmp_path):
    """(task, extra CLI arguments) for every registered task, with tiny data."""
    write_aclimdb(tmp_path / "imdb", {(s, c): [b"good film " * 3, b"bad film " * 4]
                                      for s in ("train", "test") for c in ("pos", "neg")})
    write_aan(tmp_path / "aan", [("1", "a b c", "a b"), ("0", "d e", "f g h")])
    write_cifar(tmp_path / "cifar")
    return {
        "text": ["--data", str(tmp_path / "imdb")],
        "retrieval": ["--data", str(tmp_path / "aan")],
        "image": ["--data", str(tmp_path / "cifar")],
        "listops": ["--task-option", "train_examples=20", "--task-option", "val_examples=4",
                    "--task-option", "test_examples=4"],
        "pathfinder": ["--task-option", "train_examples=6", "--task-option", "val_examples=2",
                       "--task-option", "test_examples=2"],
    }


def test_every_task_trains_with_its_cpu_preset(tmp_path, capsys):
    import json

    from attnarena.cli import main

    extra = small_data(tmp_path)
    for task in list_tasks():
        args = ["train", "--task", task, "--mixer", "softmax", "--preset", "cpu", "--steps",
                "2", "--batch", "4", "--quiet", "--out", str(tmp_path / "runs"),
                "--json", str(tmp_path / f"{task}.json")] + extra.get(task, [])
        assert main(args) == 0, task
        result = json.loads((tmp_path / f"{task}.json").read_text())
        metric = result["metrics"]["metric"]
        assert np.isfinite(result["metrics"][f"test_{metric}"]), task
        if task == "icl_regression":
            assert set(result["metrics"]["baselines"]) >= {"least_squares", "ridge",
                                                           "gd_one_step", "zero"}
    capsys.readouterr()


def test_tasks_that_need_data_say_what_they_expected(tmp_path, capsys):
    from attnarena.cli import main

    for task, expected in (("text", "aclImdb"), ("retrieval", "new_aan_pairs"),
                           ("image", "data_batch_1")):
        assert main(["train", "--task", task, "--mixer", "softmax", "--quiet",
                     "--data", str(tmp_path / "missing")]) == 2
        err = capsys.readouterr().err
        assert "does not exist" in err and expected in err and "Traceback" not in err


def test_data_command_writes_every_task(tmp_path, capsys):
    from attnarena.cli import main

    for task in list_tasks():
        out = tmp_path / task
        args = ["data", task, "--out", str(out), "--examples", "3", "--preset", "cpu"]
        if task in ("text", "retrieval", "image"):
            assert main(args) == 2
            assert "cannot be generated" in capsys.readouterr().err
            args.append("--synthetic")
        if task in ("listops", "pathfinder"):
            args += ["--option", "train_examples=4", "--option", "val_examples=1",
                     "--option", "test_examples=1"]
        assert main(args) == 0, task
        assert any(p.is_file() for p in out.rglob("*")), task
    # what the stand-ins hold reads back through the real readers
    assert len(create_task("text", data_dir=str(tmp_path / "text")).split("train")) == 200
    assert len(create_task("retrieval", data_dir=str(tmp_path / "retrieval")).split("val")) > 0
    assert len(create_task("image", data_dir=str(tmp_path / "image")).split("test")) == 100
    assert main(["data", "copy", "--out", str(tmp_path / "copy-default"), "--examples",
                 "2"]) == 0  # no paper preset: the cpu one
    assert main(["data", "copy", "--out", str(tmp_path / "x"), "--preset", "paper"]) == 2
    assert "no preset 'paper'" in capsys.readouterr().err
    mqar = np.load(tmp_path / "mqar" / "test.npz")
    assert mqar["inputs"].shape[0] == 3 and set(mqar.files) == {"inputs", "targets", "weights"}
    capsys.readouterr()


def test_mqar_fixed_training_set():
    task = create_task("mqar", vocab=64, length=32, pairs=4, train_examples=50)
    again = create_task("mqar", vocab=64, length=32, pairs=4, train_examples=50)
    task.prepare()
    pool = task.fixed_set()["inputs"]
    assert pool.shape == (50, 32)
    batch = again.batch(200, torch.Generator().manual_seed(3))
    rows = {tuple(r) for r in pool.tolist()}
    assert all(tuple(r) in rows for r in batch["inputs"].tolist())  # only the fixed set
    assert len({tuple(r) for r in batch["inputs"].tolist()}) <= 50
    val = task.batch(50, torch.Generator().manual_seed(3), "val")
    assert not any(tuple(r) in rows for r in val["inputs"].tolist())  # fresh draws
    with pytest.raises(ValueError, match="train_examples"):
        create_task("mqar", train_examples=0)
