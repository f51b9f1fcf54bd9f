"""ListOps (Nangia and Bowman 2018), as Long Range Arena sets it (Tay et al. 2021, "Long
Range Arena: A Benchmark for Efficient Transformers").

Nested lists of single digits under the operators MIN, MAX, MED (the median, truncated to
an int) and SM (sum modulo 10); the answer, 0-9, is the class. A tree is a value with
probability 0.75 (always at the maximum depth), else an operator over 2 to ``max_args``
subtrees; its length counts values plus 2 per operator (the operator and its closing
bracket), and only trees with ``min_length < length < max_length`` are kept, without
duplicates. The random draws come in the order of LRA's generator (the value-or-operator
draw, then the value, or the argument count, the subtrees and the operator last).

On disk: ``basic_train.tsv``, ``basic_val.tsv``, ``basic_test.tsv`` with a header
``Source<TAB>Target`` and each tree written the way LRA's writer nests it, ``( ( ( [MAX 2 )
9 ) ] )`` for MAX of 2 and 9. Reading drops the parentheses and keeps ``]`` as its own
token: 15 symbols plus padding (0) and out-of-vocabulary ids.
"""
from __future__ import annotations

import csv
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

from attnarena._validate import check_int
from attnarena.tasks.io import data_directory, divide, labelled_batch, pad_sequences
from attnarena.tasks.kinds import ClassificationTask, DatasetTask
from attnarena.tasks.registry import register_task

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VALUE_PROBABILITY = 0.75
SYMBOLS = tuple(str(d) for d in range(10)) + OPERATORS + (END,)
PAD, OOV = 0, len(SYMBOLS) + 1
TOKEN_IDS = {s: i + 1 for i, s in enumerate(SYMBOLS)}
FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}


class _TooLong(Exception):
    pass


def generate_tree(rng: random.Random, max_depth: int = 10, max_args: int = 10, depth: int = 1,
                  limit: float = float("inf")):
    """(tree, length): a tree is an int or (operator, [subtrees]).

    A tree that grows past ``limit`` is abandoned (``_TooLong``) instead of finished: it
    would be rejected anyway, so the kept trees have the same distribution, and drawing
    stops early.
    """
    draw = rng.random() if depth < max_depth else 1.0
    if draw > 1.0 - VALUE_PROBABILITY:
        return rng.choice(range(10)), 1
    count = rng.randint(2, max_args)
    children, length = [], 2
    for _ in range(count):
        child, child_length = generate_tree(rng, max_depth, max_args, depth + 1,
                                            limit - length)
        children.append(child)
        length += child_length
        if length > limit:
            raise _TooLong
    return (rng.choice(OPERATORS), children), length


def evaluate_tree(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, children = tree
    values = [evaluate_tree(c) for c in children]
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[MED":
        return int(statistics.median(values))  # even counts: int of the two middles' mean
    if op == "[SM":
        return sum(values) % 10
    raise ValueError(f"unknown ListOps operator {op!r}")


def tree_to_string(tree) -> str:
    """LRA's writer: each argument closes one more parenthesis, then ``] )``."""
    if isinstance(tree, int):
        return str(tree)
    op, children = tree
    return ("( " * (len(children) + 1) + op
            + "".join(f" {tree_to_string(c)} )" for c in children) + " ] )")


def tree_length(tree) -> int:
    if isinstance(tree, int):
        return 1
    return 2 + sum(tree_length(c) for c in tree[1])


def generate_dataset(count: int, seed: int, min_length: int = 500, max_length: int = 2000,
                     max_depth: int = 10, max_args: int = 10) -> list:
    """``count`` distinct trees with ``min_length < length < max_length``, in the order
    drawn; deterministic given ``seed``."""
    if min_length + 1 >= max_length:
        raise ValueError(f"no tree length lies strictly between {min_length} and {max_length}")
    from tqdm import tqdm

    rng = random.Random(seed)
    kept: dict[str, object] = {}
    # progress (with an estimate of the time left) on a terminal only
    with tqdm(total=count, desc="listops trees", unit="tree", disable=None, leave=False,
              mininterval=1.0) as bar:
        while len(kept) < count:
            try:
                tree, length = generate_tree(rng, max_depth, max_args, limit=max_length)
            except _TooLong:
                continue
            if min_length < length < max_length:
                before = len(kept)
                kept.setdefault(tree_to_string(tree), tree)
                bar.update(len(kept) - before)
    return list(kept.values())


def tokenize(source: str) -> list[int]:
    """LRA's reading: parentheses dropped, whitespace tokens, ``]`` kept."""
    return [TOKEN_IDS.get(t, OOV) for t in source.replace("(", " ").replace(")", " ").split()]


def write_tsv(path, trees) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["Source", "Target"])
        for tree in trees:
            writer.writerow([tree_to_string(tree), evaluate_tree(tree)])


def read_tsv(path) -> list[tuple[str, int]]:
    """(source, target) rows of a ListOps TSV (LRA's release or ours)."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except OSError as error:
        raise ValueError(f"cannot read ListOps file {path}: {error.strerror}") from None
    except csv.Error as error:  # e.g. a field over the csv module's size limit
        raise ValueError(f"{path} is not a ListOps TSV: {error}") from None
    if not rows or [c.strip() for c in rows[0][:2]] != ["Source", "Target"]:
        raise ValueError(f"{path}: expected a TSV with header 'Source<TAB>Target', got "
                         f"{rows[0] if rows else 'an empty file'!r}")
    out = []
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            target = int(row[1])
        except (IndexError, ValueError):
            raise ValueError(f"{path} line {number}: expected 'source<TAB>digit', got "
                             f"{row!r}") from None
        if not 0 <= target <= 9:
            raise ValueError(f"{path} line {number}: target must be 0-9, got {target}")
        out.append((row[0], target))
    return out


@register_task
@dataclass(frozen=True)
class ListOps(DatasetTask, ClassificationTask):
    """ListOps classification (10 classes). ``data_dir`` reads the three TSVs (LRA's
    release or ``attnarena data listops``); without it the splits are generated in memory
    from ``seed`` with the length bounds and sizes given here."""

    data_dir: str | None = None
    seed: int = 0
    train_examples: int = 96_000
    val_examples: int = 2_000
    test_examples: int = 2_000
    min_length: int = 500
    max_length: int = 2_000
    max_depth: int = 10
    max_args: int = 10
    max_tokens: int = 2_000

    name = "listops"
    num_classes = 10
    presets = {
        # LRA's ListOps config: 4 layers, emb 512, 8 heads, MLP 1024, CLS pooling, batch 32,
        # 5,000 steps, lr 0.05, linear warmup 1,000 then rsqrt decay, weight decay 0.1.
        "paper": {"task": {},
                  "model": {"dim": 512, "depth": 4, "heads": 8, "mlp_dim": 1024,
                            "pooling": "cls", "position": "learned"},
                  "train": {"steps": 5000, "batch": 32, "lr": 0.05, "warmup": 1000,
                            "schedule": "rsqrt", "weight_decay": 0.1, "eval_every": 1000,
                            "eval_examples": 0}},
        # CPU: the same generator with short trees (length 20-100) and 6,000 of them.
        "cpu": {"task": {"train_examples": 5000, "val_examples": 500, "test_examples": 500,
                         "min_length": 20, "max_length": 100, "max_tokens": 100},
                "model": {"dim": 64, "depth": 2, "heads": 4, "mlp_dim": 128,
                          "pooling": "cls", "position": "learned"},
                "train": {"steps": 1500, "batch": 32, "lr": 2e-3, "warmup": 100,
                          "schedule": "cosine", "weight_decay": 0.01, "eval_every": 250,
                          "eval_examples": 0}},
    }

    def __post_init__(self):
        for key in ("train_examples", "val_examples", "test_examples", "max_depth",
                    "max_tokens"):
            check_int(getattr(self, key), f"listops {key}")
        check_int(self.max_args, "listops max_args", minimum=2)

    @property
    def vocab_size(self) -> int:
        return OOV + 1

    @property
    def sequence_length(self) -> int:
        return self.max_tokens

    def check_data(self):
        if self.data_dir is None:
            return
        data_directory(self.name, self.data_dir,
                       f"{', '.join(FILES.values())} (LRA's listops-1000 folder)",
                       needs=FILES.values())

    def generated_splits(self) -> dict:
        """The three splits drawn from one stream of distinct trees, as LRA splits its set."""
        trees = generate_dataset(self.train_examples + self.val_examples + self.test_examples,
                                 self.seed, self.min_length, self.max_length, self.max_depth,
                                 self.max_args)
        return divide(trees, self.train_examples, self.val_examples)

    def load_splits(self):
        if self.data_dir is None:
            return {split: [(tokenize(tree_to_string(t)), evaluate_tree(t)) for t in trees]
                    for split, trees in self.generated_splits().items()}
        self.check_data()
        return {split: [(tokenize(source), target)
                        for source, target in read_tsv(Path(self.data_dir) / file)]
                for split, file in FILES.items()}

    def collate(self, examples):
        ids, mask = pad_sequences([e[0] for e in examples], limit=self.max_tokens)
        return labelled_batch(ids, [e[1] for e in examples], mask)

    def write_data(self, out_dir) -> list[Path]:
        """The three TSVs in LRA's format."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for split, trees in self.generated_splits().items():
            paths.append(out / FILES[split])
            write_tsv(paths[-1], trees)
        return paths
