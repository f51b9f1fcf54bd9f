"""Byte-level text tasks of Long Range Arena (Tay et al. 2021): Text (IMDB sentiment, Maas
et al. 2011) and Retrieval (ACL Anthology Network citation matching, Radev et al. 2013).

Bytes are the tokens: byte b is id b + 1, and 0 pads (vocabulary 257). Neither dataset
can be generated: both are read from a directory the user names, in the layout of the
original downloads. ``write_synthetic_*`` write small stand-ins in those layouts, useful
to try the pipeline offline; their numbers mean nothing about the real tasks.
"""
from __future__ import annotations

import csv
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnarena._validate import check_int
from attnarena.tasks.io import data_directory, labelled_batch, pad_sequences
from attnarena.tasks.kinds import ClassificationTask, DatasetTask, MatchingTask
from attnarena.tasks.registry import register_task

BYTE_VOCAB = 257
AAN_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv",
             "test": "new_aan_pairs.test.tsv"}


# CPU preset of both byte-level tasks: the first 256 bytes of each text, a small model,
# 1,000 steps.
BYTES_CPU = {"task": {"max_length": 256},
             "model": {"dim": 64, "depth": 2, "heads": 4, "mlp_dim": 128, "pooling": "mean",
                       "position": "learned"},
             "train": {"steps": 1000, "batch": 32, "lr": 2e-3, "warmup": 100,
                       "schedule": "cosine", "weight_decay": 0.01, "eval_every": 250,
                       "eval_examples": 2000}}


def encode_bytes(data: bytes, length: int) -> np.ndarray:
    return np.frombuffer(data[:length], dtype=np.uint8).astype(np.int64) + 1


def byte_batch(texts, length: int):
    """Byte strings -> (ids (B, L), mask (B, L)), each cut to ``length`` bytes."""
    return pad_sequences([encode_bytes(t, length) for t in texts], limit=length)


class ByteLevel:
    """Bytes as tokens, sequences of at most ``max_length`` bytes."""

    max_length: int

    @property
    def vocab_size(self):
        return BYTE_VOCAB

    @property
    def sequence_length(self):
        return self.max_length

    def __post_init__(self):
        check_int(self.max_length, f"{self.name} max_length")


def imdb_root(data_dir) -> Path:
    """The aclImdb folder: ``data_dir`` itself or its ``aclImdb`` child."""
    expected = "the aclImdb folders train/pos, train/neg, test/pos, test/neg of .txt reviews"
    return data_directory("text", data_dir, expected, inside="aclImdb",
                          needs=[f"{s}/{c}" for s in ("train", "test") for c in ("pos", "neg")])


def read_imdb(root: Path, split: str, max_bytes: int) -> list[tuple[bytes, int]]:
    """(review bytes, label) pairs, negatives (0) then positives (1), each in file-name
    order."""
    examples = []
    for label, folder in ((0, "neg"), (1, "pos")):
        for file in sorted((root / split / folder).glob("*.txt")):
            examples.append((file.read_bytes()[:max_bytes], label))
    if not examples:
        raise ValueError(f"task 'text': no .txt reviews under {root / split}")
    return examples


@register_task
@dataclass(frozen=True)
class Text(ByteLevel, DatasetTask, ClassificationTask):
    """Byte-level IMDB sentiment (2 classes) from the ``aclImdb`` folder; reviews cut to
    ``max_length`` bytes (1000 in LRA, 4096 as later papers use). As in LRA, the validation
    set is IMDB's test split."""

    data_dir: str | None = None
    max_length: int = 1000

    name = "text"
    needs_data = True
    num_classes = 2
    presets = {
        # LRA's Text config: 4 layers, emb 256, 4 heads, MLP 1024, batch 32, 20,000 steps,
        # lr 0.05, linear warmup 8,000 then rsqrt decay.
        "paper": {"task": {"max_length": 1000},
                  "model": {"dim": 256, "depth": 4, "heads": 4, "mlp_dim": 1024,
                            "pooling": "cls", "position": "learned"},
                  "train": {"steps": 20000, "batch": 32, "lr": 0.05, "warmup": 8000,
                            "schedule": "rsqrt", "weight_decay": 0.1, "eval_every": 2000,
                            "eval_examples": 0}},
        "cpu": BYTES_CPU,
    }

    def check_data(self):
        imdb_root(self.data_dir)

    def load_splits(self):
        root = imdb_root(self.data_dir)
        test = read_imdb(root, "test", self.max_length)
        random.Random(0).shuffle(test)  # a fixed interleaving: capped evaluations see both
        return {"train": read_imdb(root, "train", self.max_length), "val": test,
                "test": test}  # LRA validated on IMDB's test split

    def collate(self, examples):
        ids, mask = byte_batch([e[0] for e in examples], self.max_length)
        return labelled_batch(ids, [e[1] for e in examples], mask)


def read_aan(path: Path, max_bytes: int) -> list[tuple[bytes, bytes, int]]:
    """Rows of an AAN pairs TSV: label, id1, id2, text1, text2; no header, no quoting."""
    csv.field_size_limit(sys.maxsize)
    rows = []
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        for number, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE),
                                     start=1):
            if not row:
                continue
            if len(row) != 5:
                raise ValueError(f"{path} line {number}: expected 5 tab-separated fields "
                                 f"(label, id1, id2, text1, text2), got {len(row)}")
            try:
                label = int(float(row[0]))
            except (ValueError, OverflowError):
                raise ValueError(f"{path} line {number}: label must be 0 or 1, got "
                                 f"{row[0]!r}") from None
            if label not in (0, 1):
                raise ValueError(f"{path} line {number}: label must be 0 or 1, got {label}")
            text1, text2 = (t.encode("utf-8", "surrogateescape")[:max_bytes]
                            for t in row[3:5])
            rows.append((text1, text2, label))
    return rows


@register_task
@dataclass(frozen=True)
class Retrieval(ByteLevel, DatasetTask, MatchingTask):
    """Byte-level AAN document matching (2 classes) from LRA's release TSVs
    (``new_aan_pairs.{train,eval,test}.tsv``), ``max_length`` bytes per document, a dual
    encoder; ``combine`` "paper" = [u, v, u*v, u-v] (the LRA paper's head), "concat" =
    [u, v] (LRA's released code)."""

    data_dir: str | None = None
    max_length: int = 4000
    combine: str = "paper"

    name = "retrieval"
    needs_data = True
    num_classes = 2
    presets = {
        # LRA's Retrieval config: 4 layers, emb 128, 4 heads, MLP 512, batch 32, 5,000
        # steps, lr 0.05, warmup 8,000, rsqrt decay.
        "paper": {"task": {"max_length": 4000},
                  "model": {"dim": 128, "depth": 4, "heads": 4, "mlp_dim": 512,
                            "pooling": "cls", "position": "learned"},
                  "train": {"steps": 5000, "batch": 32, "lr": 0.05, "warmup": 8000,
                            "schedule": "rsqrt", "weight_decay": 0.1, "eval_every": 1000,
                            "eval_examples": 0}},
        "cpu": BYTES_CPU,
    }

    def __post_init__(self):
        super().__post_init__()
        if self.combine not in ("paper", "concat"):
            raise ValueError(f"retrieval combine must be 'paper' ([u, v, u*v, u-v]) or "
                             f"'concat' ([u, v]), got {self.combine!r}")

    def _root(self) -> Path:
        expected = ", ".join(AAN_FILES.values()) + " (LRA's tsv_data folder)"
        return data_directory(self.name, self.data_dir, expected, needs=AAN_FILES.values())

    def check_data(self):
        self._root()

    def load_splits(self):
        root = self._root()
        return {split: read_aan(root / file, self.max_length)
                for split, file in AAN_FILES.items()}

    def collate(self, examples):
        ids, mask = byte_batch([e[0] for e in examples], self.max_length)
        ids2, mask2 = byte_batch([e[1] for e in examples], self.max_length)
        return {"inputs": ids, "mask": mask, "inputs2": ids2, "mask2": mask2,
                "labels": torch.tensor([e[2] for e in examples], dtype=torch.long)}


# Stand-ins in the real layouts -------------------------------------------------------------

_GOOD = ("wonderful", "superb", "moving", "brilliant", "delightful", "great", "touching")
_BAD = ("dreadful", "boring", "awful", "clumsy", "tedious", "terrible", "lifeless")
_FILLER = ("the", "film", "plot", "actor", "scene", "story", "camera", "music", "ending",
           "was", "and", "a", "with", "of", "director", "script", "quite", "rather")


def _sentence(rng, words, cue, cues):
    body = [rng.choice(words) for _ in range(rng.randint(20, 60))]
    for _ in range(cues):
        body.insert(rng.randrange(len(body) + 1), rng.choice(cue))
    return " ".join(body).capitalize() + "."


def write_synthetic_imdb(out_dir, per_class: int = 100, seed: int = 0) -> Path:
    """An ``aclImdb`` tree of made-up reviews whose sentiment words give the label."""
    rng = random.Random(seed)
    root = Path(out_dir) / "aclImdb"
    for split in ("train", "test"):
        for label, folder in ((1, "pos"), (0, "neg")):
            path = root / split / folder
            path.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                text = _sentence(rng, _FILLER, _GOOD if label else _BAD, rng.randint(1, 3))
                (path / f"{i}_{rng.randint(7, 10) if label else rng.randint(1, 4)}.txt"
                 ).write_text(text)
    return root


def write_synthetic_aan(out_dir, pairs: int = 200, seed: int = 0) -> list[Path]:
    """AAN-layout TSVs of made-up documents; a pair is linked (label 1) when both share a
    topic word."""
    rng = random.Random(seed)
    topics = [f"topic{i}" for i in range(20)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, file in AAN_FILES.items():
        paths.append(out / file)
        with open(paths[-1], "w") as f:
            for i in range(pairs if split == "train" else pairs // 4):
                a = rng.choice(topics)
                label = rng.random() < 0.5
                b = a if label else rng.choice([t for t in topics if t != a])
                docs = [_sentence(rng, _FILLER, (t,), 3) for t in (a, b)]
                f.write(f"{float(label)}\t{split}{i}a\t{split}{i}b\t{docs[0]}\t{docs[1]}\n")
    return paths
