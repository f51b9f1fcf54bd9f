"""Pathfinder (Linsley et al. 2018, "Learning long-range spatial dependencies with
horizontal gated recurrent units"; Kim et al. 2020, "Disentangling neural mechanisms for
perceptual grouping"), as Long Range Arena uses it (Tay et al. 2021): are the two circular
markers on the same contour?

The generator draws images of the same kind. Two long contours ("snakes") grow from seeds
``seed_distance`` apart, paddle by paddle: candidate next headings lie around the current
one, weighted by cos(min(|turn| * continuity, pi/2))^2 and by whether the paddle fits (stays
on the canvas and clear of every other contour); a snake with nowhere to go is restarted.
Then short distractor contours. The markers go on the two ends of one snake (label 1) or on
one end of each (label 0), so both long snakes are always drawn.

Rendering is exact about connectivity, so a label can be checked by flood fill: a pixel is
drawn when its centre lies within ``max(thickness / 2 + 0.25, 0.75)`` pixels of a paddle
(intensity falling off with the distance: antialiasing), consecutive paddles of a contour
join end to end, and different contours keep their centre lines far enough apart that
their drawn pixels never touch, not even diagonally. The paddles of the original are short
dashes; here they join, which is what makes the flood-fill check possible.

LRA's 32 x 32 hard setting (``curv_contour_length_14``) is the default: contour length 14
paddles of length 2, thickness 0.5, marker radius 1.5, seed distance 7, continuity 1.0,
5 distractors of 14 // 3 = 4 paddles, paddle brightness drawn from [0.75, 1]. Lengths scale
with the image for 64, 128 (Path-X) and 256.

On disk (LRA's release layout): ``<difficulty>/imgs/<n>/sample_<k>.png`` and
``<difficulty>/metadata/<n>.npy``, text files whose lines give the image folder, the file
name, an index and, fourth, the label; examples split 80/10/10 in metadata order.
"""
from __future__ import annotations

import dataclasses
import errno
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnarena._validate import check_int
from attnarena.tasks.io import data_directory, divide, labelled_batch
from attnarena.tasks.kinds import ClassificationTask, DatasetTask
from attnarena.tasks.registry import register_task

DIFFICULTIES = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}
SIZES = (32, 64, 128, 256)
SAMPLE_STEP = 0.5  # spacing of the points that stand for a centre line in distance checks
DIAGONAL = math.sqrt(2.0) + 1e-3


@dataclass(frozen=True)
class PathfinderSettings:
    """Generator settings at 32 x 32; ``scaled`` multiplies the lengths for other sizes."""

    size: int = 32
    contour_length: int = 14
    paddle_length: float = 2.0
    thickness: float = 0.5
    marker_radius: float = 1.5
    seed_distance: float = 7.0
    continuity: float = 1.0
    distractors: int = 5
    distractor_length: int = 14 // 3
    paddle_contrast: float = 0.75

    def scaled(self) -> "PathfinderSettings":
        f = self.size / 32
        return PathfinderSettings(self.size, self.contour_length, self.paddle_length * f,
                                  self.thickness * f, self.marker_radius * f,
                                  self.seed_distance * f, self.continuity, self.distractors,
                                  self.distractor_length, self.paddle_contrast)

    @property
    def reach(self) -> float:
        """Distance from a centre line within which pixel centres are drawn."""
        return max(self.thickness / 2 + 0.25, 0.75)

    @property
    def marker_reach(self) -> float:
        return self.marker_radius + 0.5

    @property
    def separation(self) -> float:
        """Least distance between sampled centre-line points of different contours: drawn
        pixels then stay more than one diagonal apart (sampling error included)."""
        return 2 * self.reach + DIAGONAL + SAMPLE_STEP

    @property
    def marker_separation(self) -> float:
        return self.marker_reach + self.reach + DIAGONAL + SAMPLE_STEP / 2


def _samples(start, end):
    n = max(2, int(math.ceil(np.linalg.norm(end - start) / SAMPLE_STEP)) + 1)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return start[None] * (1 - t) + end[None] * t


def _min_distance(points, others):
    """Smallest distance from each row of points (..., 2) to the (M, 2) others."""
    if len(others) == 0:
        return np.full(points.shape[:-1], np.inf)
    diff = points[..., None, :] - others
    return np.sqrt((diff ** 2).sum(-1)).min(-1)


def _grow(rng, s: PathfinderSettings, start, paddles, obstacles, markers=None):
    """A contour of ``paddles`` paddles from ``start`` that keeps ``s.separation`` from the
    ``obstacles`` points and ``s.marker_separation`` from ``markers``; None when stuck.

    Returns the joint points (paddles + 1, 2)."""
    heading = 0.0
    joints = [np.asarray(start, dtype=np.float64)]
    if _min_distance(joints[0][None], obstacles)[0] < s.separation or (
            markers is not None
            and _min_distance(joints[0][None], markers)[0] < s.marker_separation):
        return None
    own = [joints[0][None]]
    margin = s.reach + 0.5
    sep = s.separation
    for k in range(paddles):
        if k == 0:
            angles = rng.uniform(-math.pi, math.pi, 24)
            weights = np.ones(24)
        else:
            base = np.linspace(-math.pi / 2, math.pi / 2, 13)[1:-1]
            turns = base + rng.uniform(-1, 1, base.shape) * (base[1] - base[0]) / 2
            angles = heading + turns
            weights = np.cos(np.minimum(np.abs(turns) * s.continuity, math.pi / 2)) ** 2
        ends = joints[-1] + s.paddle_length * np.stack([np.cos(angles), np.sin(angles)], -1)
        t = np.linspace(0.0, 1.0, int(math.ceil(s.paddle_length / SAMPLE_STEP)) + 1)[1:]
        pts = joints[-1] + (ends - joints[-1])[:, None, :] * t[None, :, None]  # (K, m, 2)
        inside = ((pts >= margin) & (pts <= s.size - 1 - margin)).all(axis=(1, 2))
        clear = _min_distance(pts, obstacles).min(-1) >= sep
        if markers is not None:
            clear &= _min_distance(pts, markers).min(-1) >= s.marker_separation
        earlier = np.concatenate(own[:-3]) if len(own) > 3 else np.zeros((0, 2))
        clear &= _min_distance(pts, earlier).min(-1) >= sep  # no curling onto itself
        weights = weights * inside * clear
        if weights.sum() <= 0:
            return None
        pick = rng.choice(len(angles), p=weights / weights.sum())
        heading = angles[pick]
        joints.append(ends[pick])
        own.append(pts[pick])
    return np.stack(joints)


def _points(joints):
    return np.concatenate([_samples(a, b) for a, b in zip(joints[:-1], joints[1:])])


def _render(s: PathfinderSettings, contours, brightness, markers) -> np.ndarray:
    """uint8 (size, size) image; contours: lists of joints, brightness: per paddle."""
    ys, xs = np.mgrid[0:s.size, 0:s.size]
    centres = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float64)
    value = np.zeros(len(centres))
    reach, core = s.reach, s.thickness / 2
    for joints, bright in zip(contours, brightness):
        a, b = joints[:-1], joints[1:]
        ab = b - a
        t = ((centres[:, None, :] - a) * ab).sum(-1) / (ab * ab).sum(-1).clip(1e-12)
        nearest = a + t.clip(0, 1)[..., None] * ab
        d = np.sqrt(((centres[:, None, :] - nearest) ** 2).sum(-1))  # (P, paddles)
        level = np.clip((reach - d) / max(reach - core, 1e-6), 0, 1)
        on = d < reach
        value = np.maximum(value, np.where(on, bright * (0.3 + 0.7 * level), 0).max(-1))
    for centre in markers:
        d = np.sqrt(((centres - centre) ** 2).sum(-1))
        level = np.clip(s.marker_reach - d, 0, 1)
        value = np.maximum(value, np.where(d < s.marker_reach, 0.3 + 0.7 * level, 0))
    return np.round(value * 255).astype(np.uint8).reshape(s.size, s.size)


def generate_image(rng: np.random.Generator, label: int, settings: PathfinderSettings,
                   attempts: int = 200):
    """(image uint8 (size, size), info dict) with markers joined (label 1) or not (0).

    info holds the marker centres (x, y), the contours' joints and how many distractors
    fit."""
    s = settings.scaled()
    for _ in range(attempts):
        first = rng.uniform(s.size * 0.2, s.size * 0.8, 2)
        angle = rng.uniform(-math.pi, math.pi)
        second = first + s.seed_distance * np.array([math.cos(angle), math.sin(angle)])
        snake_a = _grow(rng, s, first, s.contour_length, np.zeros((0, 2)))
        if snake_a is None:
            continue
        snake_b = _grow(rng, s, second, s.contour_length, _points(snake_a))
        if snake_b is None:
            continue
        ends_a = [snake_a[0], snake_a[-1]]
        ends_b = [snake_b[0], snake_b[-1]]
        if label:
            markers = ends_a if rng.random() < 0.5 else ends_b
        else:
            markers = [ends_a[rng.integers(2)], ends_b[rng.integers(2)]]
        pts_a, pts_b = _points(snake_a), _points(snake_b)
        # every marker stays clear of the long snake it does not sit on
        ok = True
        for m in markers:
            on_a = any(m is e for e in ends_a)
            other = pts_b if on_a else pts_a
            if _min_distance(m[None], other)[0] < s.marker_separation:
                ok = False
        if not label and np.linalg.norm(markers[0] - markers[1]) < \
                2 * s.marker_reach + DIAGONAL:
            ok = False  # two markers' discs would touch
        if not ok:
            continue
        contours = [snake_a, snake_b]
        obstacles = np.concatenate([pts_a, pts_b])
        marker_array = np.stack(markers)
        placed = 0
        for _ in range(s.distractors):
            for _ in range(20):
                start = rng.uniform(0, s.size, 2)
                grown = _grow(rng, s, start, s.distractor_length, obstacles, marker_array)
                if grown is not None:
                    contours.append(grown)
                    obstacles = np.concatenate([obstacles, _points(grown)])
                    placed += 1
                    break
        brightness = [rng.uniform(s.paddle_contrast, 1.0, len(c) - 1) for c in contours]
        image = _render(s, contours, brightness, markers)
        return image, {"markers": marker_array, "contours": contours, "distractors": placed}
    raise RuntimeError(f"could not draw a {s.size} x {s.size} Pathfinder image in "
                       f"{attempts} attempts; the contours are too long for the canvas")


def _images(rng: np.random.Generator, count: int, settings: PathfinderSettings):
    """``count`` (image, label) pairs drawn one at a time from ``rng``, labels at random."""
    for _ in range(count):
        label = int(rng.integers(2))
        image, _ = generate_image(rng, label, settings)
        yield image, label


def generate_dataset(count: int, seed: int, settings: PathfinderSettings):
    """``count`` (image, label) pairs, labels alternating at random, deterministic."""
    from tqdm import tqdm

    # progress (with an estimate of the time left) on a terminal only
    return list(tqdm(_images(np.random.default_rng(seed), count, settings), total=count,
                     desc="pathfinder images", unit="img", disable=None, leave=False,
                     mininterval=1.0))


PROGRESS_FILE = ".attnarena-progress.json"  # beside metadata/ while a set is being written


def write_pathfinder(out_dir, count: int, seed: int, settings: PathfinderSettings,
                     difficulty: str = "curv_contour_length_14", per_folder: int = 1000,
                     progress: bool = True) -> Path:
    """Write ``count`` generated images (the pairs ``generate_dataset(count, seed,
    settings)`` gives) in LRA's release layout, one image at a time; returns the difficulty
    folder.

    Memory stays that of one image. Each folder of ``per_folder`` images is finished by its
    metadata file and a progress record holding the generator's state, so an interrupted
    run resumes at the first unfinished folder and writes the same images. The free space is
    checked against the projected size first.

    Raises:
        ValueError: not enough free space, a full disk (naming the file), or a folder that
            holds a different set.
    """
    import json

    from tqdm import tqdm

    root = Path(out_dir) / difficulty
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    record_path = root / PROGRESS_FILE
    identity = {"count": count, "seed": seed, "per_folder": per_folder,
                "settings": dataclasses.asdict(settings)}
    folders = max(1, math.ceil(count / per_folder))
    rng, done = np.random.default_rng(seed), 0
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("identity") != identity:
            raise ValueError(f"{root} holds a Pathfinder set being written with other settings "
                             f"({record.get('identity')}); delete it or name another --out")
        done = record["folders_done"]
        rng.bit_generator.state = record["rng"]
    elif any((root / "metadata").iterdir()):
        raise ValueError(f"{root} already holds a Pathfinder set; delete it or name another "
                         "--out")
    if done >= folders:
        record_path.unlink()
        return root
    _check_space(root, count - done * per_folder, settings)
    bar = tqdm(total=count, initial=min(count, done * per_folder), desc="pathfinder images",
               unit="img", disable=None if progress else True, mininterval=1.0)
    target = root
    try:
        for folder in range(done, folders):
            size = min(per_folder, count - folder * per_folder)
            (root / "imgs" / str(folder)).mkdir(parents=True, exist_ok=True)
            lines = []
            for k, (image, label) in enumerate(_images(rng, size, settings)):
                name = f"sample_{k}.png"
                target = root / "imgs" / str(folder) / name
                _save_png(image, target)
                lines.append(f"imgs/{folder} {name} {k} {label}")
                bar.update(1)
            target = root / "metadata" / f"{folder}.npy"
            _write_whole(target, "\n".join(lines) + "\n")
            target = record_path
            _write_whole(record_path, json.dumps({"identity": identity,
                                                  "folders_done": folder + 1,
                                                  "rng": rng.bit_generator.state}))
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise ValueError(f"the disk is full: could not write {target}; free space and run "
                             "the same command again to resume") from None
        raise ValueError(f"could not write {target}: {error.strerror or error}") from None
    finally:
        bar.close()
    record_path.unlink()
    return root


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image, mode="L").save(path)


def _write_whole(path: Path, text: str) -> None:
    """Write under a temporary name, then rename: a reader sees all of it or none."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_space(root: Path, count: int, settings: PathfinderSettings) -> None:
    """Refuse a set that cannot fit on the disk, from the size of a sample of images."""
    import io
    import shutil

    from PIL import Image

    sample = [image for image, _ in _images(np.random.default_rng(0), 4, settings)]
    per_image = sum(len(_png_bytes(image, io, Image)) for image in sample) / len(sample)
    projected = count * (per_image + 4096)  # each file takes at least a block on most disks
    free = shutil.disk_usage(root).free
    if projected > free:
        raise ValueError(f"{count:,} Pathfinder images need about {projected / 2**30:,.1f} GiB "
                         f"and {root} has {free / 2**30:,.1f} GiB free; write fewer "
                         "(--option train_examples=...) or name another --out")


def _png_bytes(image, io, Image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def read_metadata(root: Path) -> list[tuple[Path, int]]:
    """(image path, label) pairs in metadata order (files by number, lines in order)."""
    meta = root / "metadata"
    files = sorted(meta.iterdir(), key=lambda p: (not p.stem.isdigit(),
                                                  int(p.stem) if p.stem.isdigit() else 0,
                                                  p.name))
    examples = []
    for file in files:
        for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4 or fields[3] not in ("0", "1"):
                raise ValueError(f"{file} line {number}: expected 'folder file index label "
                                 f"...' with label 0 or 1, got {line[:80]!r}")
            examples.append((root / fields[0] / fields[1], int(fields[3])))
    if not examples:
        raise ValueError(f"task 'pathfinder': no examples listed under {meta}")
    return examples


def read_png(path: Path, size: int | None = None) -> np.ndarray:
    """A grayscale image as (H, W) uint8; with ``size`` an image of another size is refused
    from its header, before its pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if size is not None and image.size != (size, size):
                raise ValueError(f"{path}: expected a {size} x {size} image (task option "
                                 f"size), got {image.size[0]} x {image.size[1]}")
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read Pathfinder image {path}: {error}") from None


@register_task
@dataclass(frozen=True)
class Pathfinder(DatasetTask, ClassificationTask):
    """Binary classification of size x size images as pixel sequences (vocabulary 256).

    ``data_dir`` reads LRA's layout (the ``difficulty`` folder inside it); otherwise
    ``train_examples`` / ``val_examples`` / ``test_examples`` images are generated from
    ``seed``."""

    data_dir: str | None = None
    difficulty: str = "curv_contour_length_14"
    size: int = 32
    seed: int = 0
    train_examples: int = 160_000
    val_examples: int = 20_000
    test_examples: int = 20_000

    name = "pathfinder"
    num_classes = 2
    presets = {
        # LRA's Transformer config for Pathfinder-32: 4 layers, emb 32, qkv 16, 4 heads,
        # MLP 32, dropout 0.2, mean pooling, fixed (sinusoidal) positions, batch 512, 200
        # epochs of 160,000 images (62,500 steps), lr 1e-3, warmup 1 epoch (313 steps),
        # cosine decay, no weight decay. LRA's attention dropout (0.1) has no counterpart.
        "paper": {"task": {},
                  "model": {"dim": 32, "mixer_dim": 16, "depth": 4, "heads": 4, "mlp_dim": 32,
                            "dropout": 0.2, "pooling": "mean", "position": "sinusoidal"},
                  "train": {"steps": 62500, "batch": 512, "lr": 1e-3, "warmup": 313,
                            "schedule": "cosine", "weight_decay": 0.0, "eval_every": 3125,
                            "eval_examples": 0}},
        # CPU: 3,600 generated 32 x 32 images (6 paddle contours: the easy setting, about
        # 40 s to draw), a small model, 300 steps. Far too little training for the task:
        # expect chance accuracy; the preset exercises the pipeline at 1024 tokens.
        "cpu": {"task": {"difficulty": "curv_baseline", "train_examples": 3000,
                         "val_examples": 300, "test_examples": 300},
                "model": {"dim": 32, "depth": 2, "heads": 4, "mlp_dim": 64,
                          "pooling": "mean", "position": "learned"},
                "train": {"steps": 300, "batch": 16, "lr": 2e-3, "warmup": 30,
                          "schedule": "cosine", "weight_decay": 0.0, "eval_every": 100,
                          "eval_examples": 0}},
    }

    def __post_init__(self):
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"unknown pathfinder difficulty {self.difficulty!r}; valid: "
                             f"{', '.join(DIFFICULTIES)}")
        if self.size not in SIZES:
            raise ValueError(f"pathfinder size must be one of {SIZES}, got {self.size!r}")
        for key in ("train_examples", "val_examples", "test_examples"):
            check_int(getattr(self, key), f"pathfinder {key}")

    @property
    def vocab_size(self):
        return 256

    @property
    def sequence_length(self):
        return self.size * self.size

    def settings(self) -> PathfinderSettings:
        length = DIFFICULTIES[self.difficulty]
        return PathfinderSettings(size=self.size, contour_length=length,
                                  distractor_length=max(1, length // 3))

    def _root(self) -> Path:
        expected = (f"LRA's Pathfinder layout: {self.difficulty}/metadata/*.npy and "
                    f"{self.difficulty}/imgs/*/*.png")
        held = sorted(p.parent.name for p in Path(self.data_dir or ".").glob("*/metadata"))
        if self.data_dir is not None and held and self.difficulty not in held:
            presets = sorted(k for k, v in self.presets.items()
                             if v["task"].get("difficulty", type(self).difficulty) in held)
            by = (f"--preset {presets[0]}, or " if presets else "") + \
                f"--task-option difficulty={held[0]}"
            raise ValueError(f"task 'pathfinder': {self.data_dir} holds difficulty "
                             f"{', '.join(held)}, not {self.difficulty}; read it with {by}")
        path = data_directory(self.name, self.data_dir, expected,
                              needs=[f"{self.difficulty}/metadata"])
        return path / self.difficulty

    def check_data(self):
        if self.data_dir is not None:
            self._root()

    def generated(self) -> list:
        """(image, label) pairs for the three splits, drawn from ``seed``."""
        return generate_dataset(self.train_examples + self.val_examples + self.test_examples,
                                self.seed, self.settings())

    def load_splits(self):
        if self.data_dir is None:
            return divide(self.generated(), self.train_examples, self.val_examples)
        data = []
        for path, label in read_metadata(self._root()):
            data.append((read_png(path, self.size), label))
        train, val = int(0.8 * len(data)), int(0.9 * len(data)) - int(0.8 * len(data))
        return divide(data, train, val)  # 80/10/10 in metadata order

    def collate(self, examples):
        images = np.stack([e[0] for e in examples]).reshape(len(examples), -1)
        return labelled_batch(torch.from_numpy(images.astype(np.int64)),
                              [e[1] for e in examples])

    def write_data(self, out_dir) -> list[Path]:
        count = self.train_examples + self.val_examples + self.test_examples
        return [write_pathfinder(out_dir, count, self.seed, self.settings(), self.difficulty)]
