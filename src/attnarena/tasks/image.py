"""Image classification on sequences of pixels: Long Range Arena's Image task (Tay et al.
2021) over CIFAR-10 (Krizhevsky 2009).

Read from the python pickle batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``:
dicts with ``b"data"``, 10000 x 3072 uint8 rows of R, G and B planes, and ``b"labels"``),
converted to grayscale (0.2989 R + 0.5870 G + 0.1140 B, truncated to an int, as
``tf.image.rgb_to_grayscale`` then an int cast), flattened row by row to 1024 pixel tokens
with vocabulary 256; 10 classes. The first 45,000 training images train, the last 5,000
validate, the test batch tests.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnarena.tasks.io import data_directory, divide, labelled_batch
from attnarena.tasks.kinds import ClassificationTask, DatasetTask
from attnarena.tasks.registry import register_task

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
GRAY = np.array([0.2989, 0.5870, 0.1140])


# What CIFAR-10's pickles hold besides dicts, lists, ints and bytes: numpy arrays (as numpy 1
# and 2 name their reconstructor) and, in protocol-2 pickles written by Python 3, bytes.
_CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                  "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
                  ("_codecs", "encode")}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only the containers, bytes and numpy arrays of a CIFAR-10 batch: a pickle
    naming any other callable (``os.system``, say) is refused before anything runs."""

    def find_class(self, module, name):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 "
                                         "batch never holds; refusing to load it")
        if module == "_codecs":
            import codecs
            return codecs.encode
        if name == "_reconstruct":  # numpy's array reconstructor, under either module name
            return np.zeros(0).__reduce__()[0]
        return getattr(np, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,)) from one pickle batch."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError,
            AttributeError, IndexError) as error:
        raise ValueError(f"cannot read CIFAR-10 batch {path}: {error}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: expected a pickled dict with b'data' and b'labels' (the "
                         "CIFAR-10 python version)")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: expected data of shape (N, 3072) and N labels, got "
                         f"{data.shape} and {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be 0-9 (CIFAR-10's classes), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 32, 32), labels


def to_grayscale(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, H, W) uint8."""
    gray = np.tensordot(GRAY, images.astype(np.float64), axes=([0], [1]))
    return np.clip(np.floor(gray), 0, 255).astype(np.uint8)


def write_cifar_batch(path, images: np.ndarray, labels) -> None:
    """A pickle batch in CIFAR-10's python format; images (N, 3, 32, 32) uint8."""
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": path.name.encode(), b"labels": [int(v) for v in labels],
                     b"data": images.reshape(len(images), -1).astype(np.uint8),
                     b"filenames": [f"{i}.png".encode() for i in range(len(images))]}, f)


@register_task
@dataclass(frozen=True)
class Image(DatasetTask, ClassificationTask):
    """Grayscale CIFAR-10 as 1024 pixel tokens. ``pool`` > 1 averages pool x pool blocks
    first (a shorter sequence for CPU runs); the last ``val_examples`` training images
    validate (default: a tenth, 5,000 of CIFAR-10's 50,000)."""

    data_dir: str | None = None
    pool: int = 1
    val_examples: int | None = None

    name = "image"
    needs_data = True
    num_classes = 10
    presets = {
        # LRA's Transformer config for CIFAR-10: 1 layer, emb 128, qkv 64, 8 heads, MLP 128,
        # dropout 0.3, learned positions, CLS pooling, batch 256, 200 epochs (35,000 steps),
        # lr 5e-4, warmup 1 epoch (175 steps), cosine decay, no weight decay. LRA's
        # attention dropout (0.2) is not in the preset, since only some mixers take one
        # (softmax, local, moh and the sparse patterns: --option attn_dropout=0.2).
        "paper": {"task": {},
                  "model": {"dim": 128, "mixer_dim": 64, "depth": 1, "heads": 8,
                            "mlp_dim": 128, "dropout": 0.3, "pooling": "cls",
                            "position": "learned"},
                  "train": {"steps": 35000, "batch": 256, "lr": 5e-4, "warmup": 175,
                            "schedule": "cosine", "weight_decay": 0.0, "eval_every": 1750,
                            "eval_examples": 0}},
        # CPU: 2 x 2 pooled images (256 tokens), a small model, 1,000 steps.
        "cpu": {"task": {"pool": 2},
                "model": {"dim": 64, "depth": 2, "heads": 4, "mlp_dim": 128,
                          "pooling": "mean", "position": "learned"},
                "train": {"steps": 1000, "batch": 32, "lr": 2e-3, "warmup": 100,
                          "schedule": "cosine", "weight_decay": 0.0, "eval_every": 250,
                          "eval_examples": 2000}},
    }

    def __post_init__(self):
        if self.pool not in (1, 2, 4, 8):
            raise ValueError(f"image pool must be 1, 2, 4 or 8, got {self.pool!r}")
        if self.val_examples is not None and (not isinstance(self.val_examples, int)
                                              or self.val_examples < 1):
            raise ValueError(f"image val_examples must be a positive int, got "
                             f"{self.val_examples!r}")

    @property
    def vocab_size(self):
        return 256

    @property
    def sequence_length(self):
        return (32 // self.pool) ** 2

    def _root(self) -> Path:
        expected = ", ".join(TRAIN_FILES + (TEST_FILE,)) + " (cifar-10-batches-py)"
        return data_directory(self.name, self.data_dir, expected,
                              needs=TRAIN_FILES + (TEST_FILE,), inside="cifar-10-batches-py")

    def check_data(self):
        self._root()

    def _pixels(self, images: np.ndarray) -> torch.Tensor:
        gray = to_grayscale(images)
        if self.pool > 1:
            n, size = len(gray), 32 // self.pool
            gray = gray.reshape(n, size, self.pool, size, self.pool).mean(axis=(2, 4))
            gray = np.floor(gray).astype(np.uint8)
        return torch.from_numpy(gray.reshape(len(gray), -1).astype(np.int64))

    def load_splits(self):
        root = self._root()
        parts = [read_cifar_batch(root / f) for f in TRAIN_FILES + (TEST_FILE,)]
        examples = [list(zip(self._pixels(images), labels.tolist())) for images, labels in parts]
        training = [e for part in examples[:-1] for e in part]
        held = self.val_examples if self.val_examples is not None else len(training) // 10
        if not 0 < held < len(training):
            raise ValueError(f"task 'image': {len(training)} training images cannot give "
                             f"{held} for validation and leave some to train on")
        return {**divide(training, len(training) - held, held), "test": examples[-1]}

    def collate(self, examples):
        return labelled_batch(torch.stack([e[0] for e in examples]), [e[1] for e in examples])


def write_synthetic_cifar(out_dir, per_batch: int = 100, seed: int = 0) -> Path:
    """``cifar-10-batches-py`` with made-up images whose brightness pattern gives the
    class; a stand-in to try the pipeline offline."""
    rng = np.random.default_rng(seed)
    root = Path(out_dir) / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    stripes = np.arange(32)[None, :] // 4  # eight vertical bands
    for name in TRAIN_FILES + (TEST_FILE,):
        labels = rng.integers(0, 10, per_batch)
        images = rng.integers(0, 60, (per_batch, 3, 32, 32))
        for i, label in enumerate(labels):
            images[i, :, :, :] += np.where(stripes == label % 8, 150, 0)[None, :, :] \
                + (40 if label >= 8 else 0)
        write_cifar_batch(root / name, np.clip(images, 0, 255).astype(np.uint8), labels)
    return root
