"""Writing a task's data to disk: streamed one image at a time, resumed where it stopped,
checked against the free space first, a full disk named; images checked before decoding."""
import errno
import pickle

import numpy as np
import pytest

from attnarena.cli import main
from attnarena.tasks import list_tasks, pathfinder
from attnarena.tasks.data import SYNTHETIC
from attnarena.tasks.pathfinder import (
    PathfinderSettings,
    generate_dataset,
    read_metadata,
    read_png,
    write_pathfinder,
)
from attnarena.tasks.registry import task_class

SETTINGS = PathfinderSettings(size=32, contour_length=6, distractor_length=2)


def _written(root):
    return [(read_png(path), label) for path, label in read_metadata(root)]


def test_an_interrupted_write_resumes_at_the_first_unfinished_folder(tmp_path, monkeypatch):
    expected = generate_dataset(10, 3, SETTINGS)
    real_save, saved = pathfinder._save_png, []

    def interrupted(image, path):
        if len(saved) == 9:
            raise KeyboardInterrupt
        saved.append(path)
        real_save(image, path)

    monkeypatch.setattr(pathfinder, "_save_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_pathfinder(tmp_path, 10, 3, SETTINGS, "d", per_folder=4, progress=False)
    assert (tmp_path / "d" / pathfinder.PROGRESS_FILE).is_file()
    saved.clear()
    monkeypatch.setattr(pathfinder, "_save_png", lambda image, path: (saved.append(path),
                                                                      real_save(image, path)))
    root = write_pathfinder(tmp_path, 10, 3, SETTINGS, "d", per_folder=4, progress=False)
    assert len(saved) == 2  # the two finished folders (8 images) were not drawn again
    got = _written(root)
    assert len(got) == 10 and all(np.array_equal(a, b) and la == lb
                                  for (a, la), (b, lb) in zip(got, expected))
    assert not (root / pathfinder.PROGRESS_FILE).exists()


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    with pytest.raises(ValueError, match=r"100,000,000 Pathfinder images need about .* GiB "
                                         r"and .* has 0.0 GiB free"):
        write_pathfinder(tmp_path, 100_000_000, 0, SETTINGS, "d", progress=False)
    assert not (tmp_path / "d" / "imgs").exists()


def test_a_full_disk_names_the_file_and_the_same_command_resumes(tmp_path, monkeypatch):
    def full(image, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathfinder, "_save_png", full)
    with pytest.raises(ValueError, match=r"disk is full: could not write .*sample_0\.png"):
        write_pathfinder(tmp_path, 3, 0, SETTINGS, "d", progress=False)


def test_a_folder_holding_another_set_is_refused(tmp_path):
    write_pathfinder(tmp_path, 2, 0, SETTINGS, "d", progress=False)
    with pytest.raises(ValueError, match="already holds a Pathfinder set"):
        write_pathfinder(tmp_path, 2, 0, SETTINGS, "d", progress=False)


def test_the_cli_writes_pathfinder_data_that_training_reads(tmp_path, capsys):
    assert main(["data", "pathfinder", "--out", str(tmp_path), "--option",
                 "difficulty=curv_baseline", "--option", "train_examples=4", "--option",
                 "val_examples=1", "--option", "test_examples=1"]) == 0
    assert len(read_metadata(tmp_path / "curv_baseline")) == 6


def test_an_oversized_image_is_refused_from_its_header(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("L", (3000, 2000)).save(tmp_path / "big.png")

    def no_decode(*args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(Image.Image, "convert", no_decode)
    with pytest.raises(ValueError, match=r"expected a 32 x 32 image .* got 3000 x 2000"):
        read_png(tmp_path / "big.png", 32)


GENERATING = [t for t in list_tasks() if t not in SYNTHETIC]


class _Plant:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("task", GENERATING)
def test_data_then_train_round_trips_at_the_default_preset(task, tmp_path, capsys):
    small = {"listops": {"train_examples": 40, "val_examples": 8, "test_examples": 8},
             "pathfinder": {"train_examples": 16, "val_examples": 2, "test_examples": 2}}
    options = [f"{k}={v}" for k, v in small.get(task, {}).items()]
    args = ["data", task, "--out", str(tmp_path / task), "--examples", "8"]
    for option in options:
        args += ["--option", option]
    assert main(args) == 0
    if not task_class(task).reads_data:
        return  # drawn fresh each batch: its files are for use outside the arena
    train_args = ["train", "--task", task, "--mixer", "gla", "--data", str(tmp_path / task),
                  "--steps", "1", "--quiet", "--out", str(tmp_path / "out")]
    assert main(train_args) == 0, capsys.readouterr().err


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


def test_an_image_bomb_is_one_clear_error(tmp_path, monkeypatch):
    from PIL import Image

    from attnarena.tasks.pathfinder import read_png

    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1,024 pixels: over twice the limit
    with pytest.raises(ValueError, match="cannot read Pathfinder image .*big.png"):
        read_png(tmp_path / "big.png")
