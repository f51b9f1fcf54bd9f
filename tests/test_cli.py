import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnarena as aa
from attnarena.arena.measure.speed import SpeedConfig, measure_case, run_speed
from attnarena.arena.report.leaderboard import leaderboard_markdown
from attnarena.arena.run.config import RunConfig
from attnarena.arena.store import Store
from attnarena.cli import main
from attnarena.options import MixerSpec
from attnarena.tasks import create_task, task_presets


def test_list_shows_every_mechanism(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["name", "family", "patterns", "forms"]
    for name in aa.list_mixers():
        assert any(line.startswith(name + " ") for line in out.splitlines())
    assert main(["list", "--long"]) == 0
    assert "Katharopoulos et al. 2020" in capsys.readouterr().out


def test_speed_writes_csv_json_and_plot(tmp_path, capsys):
    code = main(["speed", "--mixers", "softmax,linear:form=recurrent", "--lengths", "8,16",
                 "--pass", "fwdbwd", "--heads", "2", "--head-dim", "4", "--repeats", "2",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "speed-fwdbwd.csv").open()))
    assert [(r["mixer"], r["length"], r["status"]) for r in rows] == [
        ("softmax", "8", "ok"), ("softmax", "16", "ok"),
        ("linear:form=recurrent", "8", "ok"), ("linear:form=recurrent", "16", "ok")]
    assert all(float(r["median_ms"]) > 0 for r in rows)
    data = json.loads((tmp_path / "speed-fwdbwd.json").read_text())
    assert data["meta"]["environment"]["torch"] and data["meta"]["matmul_gflops"] > 0
    assert (tmp_path / "speed-fwdbwd.png").read_bytes()[:4] == b"\x89PNG"
    assert "GFLOP/s" in capsys.readouterr().out


def test_speed_decode_pass_reports_state_size(tmp_path):
    cfg = SpeedConfig(mixers=["linear", "softmax"], lengths=[8, 32], pass_="decode", heads=2,
                      head_dim=4, repeats=2)
    rows = run_speed(cfg, progress=False)["rows"]
    assert all(r["status"] == "ok" for r in rows)
    linear = [r["state_mb"] for r in rows if r["mixer"] == "linear"]
    softmax = [r["state_mb"] for r in rows if r["mixer"] == "softmax"]
    assert linear[0] == linear[1]  # constant-size recurrent state
    assert softmax[1] > softmax[0]  # the KV cache grows with context


def test_timeouts_are_recorded_and_longer_lengths_skipped():
    cfg = SpeedConfig(mixers=["softmax"], lengths=[4, 64, 128], heads=1, head_dim=4,
                      time_budget=0.0)
    rows = run_speed(cfg, progress=False)["rows"]
    assert rows[0]["status"] == "timeout"
    assert rows[1]["status"] == rows[2]["status"] == "skipped (timeout at L=4)"


def test_errors_are_recorded_not_raised():
    cfg = SpeedConfig(mixers=["local:window=0"], lengths=[4], heads=1, head_dim=4)
    row = measure_case(cfg.mixers[0], 4, cfg)
    assert row["status"].startswith("error: ValueError") and "window" in row["status"]


def test_mixer_specs():
    spec = MixerSpec.parse("performer:features=32:redraw_interval=null")
    assert spec.name == "performer" and dict(spec.options) == {"features": 32,
                                                               "redraw_interval": None}
    with pytest.raises(ValueError, match="key=value"):
        MixerSpec.parse("linear:form")
    with pytest.raises(ValueError, match="valid names"):
        MixerSpec.parse("lineer")
    with pytest.raises(ValueError, match="pass"):
        SpeedConfig(mixers=["linear"], pass_="bwd")
    with pytest.raises(ValueError, match="decode"):
        SpeedConfig(mixers=["linear"], pass_="decode", causal=False)


def test_unknown_mixer_is_one_clear_error(capsys):
    assert main(["speed", "--mixers", "nope", "--lengths", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnarena speed: error: unknown mixer 'nope'")
    assert main(["run", "--mixers", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnarena run: error:") and "unknown mixer 'nope'" in err
    assert len(err.strip().splitlines()) == 1


def _speed_row(mixer, length, ms, mem, pass_="fwd", error=None):
    return {"mixer": mixer, "length": length, "pass": pass_, "status": "ok", "median_ms": ms,
            "peak_mem_mb": mem, "state_mb": mem, "rel_error": error, "batch": 1, "heads": 4,
            "head_dim": 64, "dtype": "float32"}


def test_crossover_and_error_columns_come_from_the_stored_rows(tmp_path):
    from attnarena.arena.report.speed import crossovers
    from attnarena.arena.store import Store

    rows = [_speed_row("softmax", n, ms, mem) for n, ms, mem in
            ((1024, 10, 40), (4096, 100, 160), (16384, 1000, 640))]
    rows += [_speed_row("linear", n, ms, mem) for n, ms, mem in
             ((1024, 20, 30), (4096, 50, 100), (16384, 200, 400))]  # faster from 4096
    rows += [_speed_row("local", n, ms, mem, error=e) for n, ms, mem, e in
             ((1024, 5, 50, 0.5), (4096, 20, 100, 0.2), (16384, 80, 300, 0.1))]
    rows += [_speed_row("heavy", n, ms, mem) for n, ms, mem in
             ((4096, 20, 50), (16384, 2000, 100))]  # no 1024 row; loses at the longest
    store = Store(tmp_path / "a.sqlite")
    env = {"hardware": "test cpu", "threads": 2}
    for i, row in enumerate(rows):
        store.add_speed(f"case{i}", row, "suite", env)
    stored = [r for r in store.speed_rows() if r["pass"] == "fwd"]
    # linear is slower at 1024, local needs more memory there; heavy loses at 16384
    assert crossovers(stored) == {"heavy": None, "linear": 4096, "local": 4096}
    lines = leaderboard_markdown(store).splitlines()

    def row(mixer):
        return next(line for line in lines if line.startswith(f"| {mixer} |"))

    # rows timed before spreads were kept: medians alone; peak memory at the longest length
    assert row("softmax") == "| softmax | 10.00 | 100.00 | 1000.00 | 640 | baseline | - |"
    assert row("linear") == "| linear | 20.00 | 50.00 | 200.00 | 400 | L=4096 | - |"
    assert row("heavy") == "| heavy | - | 20.00 | 2000.00 | 100 | never | - |"
    assert row("local") == "| local | 5.00 | 20.00 | 80.00 | 300 | L=4096 | 0.1 (L=16384) |"


def test_speed_measures_the_error_of_approximations_against_exact_softmax():
    from attnarena.arena.measure.speed import softmax_error

    # a window covering the whole sequence is exact softmax attention; a short one is not
    for window, exact in ((64, True), (4, False)):
        torch.manual_seed(0)
        mixer = aa.create_mixer("local", dim=16, heads=2, causal=True, window=window).eval()
        error = softmax_error(mixer, torch.randn(2, 40, 16))
        assert (error < 1e-6) if exact else (error > 1e-3)
    performer = aa.create_mixer("performer", dim=16, heads=2).eval()
    assert 0 < softmax_error(performer, torch.randn(1, 30, 16)) < 1
    row = measure_case(MixerSpec.parse("performer"), 32,
                       SpeedConfig(mixers=["performer"], lengths=[32], heads=2, head_dim=8,
                                   repeats=1))
    assert row["status"] == "ok" and 0 < row["rel_error"] < 1
    row = measure_case(MixerSpec.parse("gla"), 32,
                       SpeedConfig(mixers=["gla"], lengths=[32], heads=2, head_dim=8,
                                   repeats=1))
    assert row["rel_error"] is None  # not an approximation of softmax attention


def test_a_bad_option_value_is_refused_before_a_run_is_claimed(tmp_path, capsys):
    from attnarena.cli import main

    store = tmp_path / "a.sqlite"
    assert main(["train", "--task", "copy", "--mixer", "local", "--option", "window=abc",
                 "--store", str(store), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "window must be a positive int, got 'abc'" in capsys.readouterr().err
    assert not store.exists() or Store(store).runs() == []


def test_an_option_given_twice_is_refused(tmp_path, capsys):
    from attnarena.cli import main

    assert main(["compress", "some-run", "--method", "magnitude sparsity=0.5 sparsity=0.9",
                 "--store", str(tmp_path / "a.sqlite")]) == 2
    assert "option 'sparsity' of method magnitude is given twice (0.5 and 0.9)" in \
        capsys.readouterr().err


def test_a_one_step_recipe_table_may_set_distills_steps(tmp_path):
    from attnarena.cli import _compress_recipes, build_parser

    recipes = tmp_path / "r.toml"
    recipes.write_text('[[recipe]]\nmethod = "distill"\nsteps = 300\n'
                       '[[recipe]]\nsteps = [{method = "magnitude", sparsity = 0.5}, '
                       '{method = "distill", steps = 20}]\n')
    args = build_parser().parse_args(["compress", "x", "--recipes", str(recipes)])
    [one], [first, second] = _compress_recipes(args)
    assert one.method == "distill" and one.config.steps == 300
    assert (first.method, second.config.steps) == ("magnitude", 20)
    recipes.write_text('[[recipe]]\nsteps = 300\n')
    with pytest.raises(ValueError, match=r"r\.toml: a recipe is \{method"):
        _compress_recipes(args)


def test_a_multi_line_error_prints_as_one_line_with_its_detail(monkeypatch, capsys):
    import attnarena.cli as cli

    def fails(args):
        raise RuntimeError("Error(s) in loading state_dict for CausalLM:\n\tsize mismatch for "
                           "head.weight: copying a param with shape [4, 8]")

    monkeypatch.setattr(cli, "cmd_list", fails)
    assert cli.main(["list"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "CausalLM: size mismatch for head.weight" in line and "--traceback" in line


def test_train_records_its_run_where_run_and_report_look(tmp_path, capsys):
    out = tmp_path / "results"
    args = ["train", "--task", "copy", "--mixer", "gla", "--steps", "2", "--model", "dim=16",
            "--model", "depth=1", "--model", "heads=2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    [run] = Store(out / "arena.sqlite").runs()
    assert run["status"] == "done" and run["mixer"] == "gla"
    assert main(["report", "--store", str(out / "arena.sqlite"), "--out", str(out)]) == 0
    assert "| gla |" in capsys.readouterr().out
    other = tmp_path / "other"
    assert main([*args[:-1], str(other), "--no-store"]) == 0
    assert not (other / "arena.sqlite").exists() and (other / "runs").is_dir()


def test_the_decoding_state_counts_what_a_kv_cache_holds():
    from attnarena.arena.measure.speed import _state_bytes

    mixer = aa.create_mixer("softmax", dim=16, heads=2, causal=True)
    local = aa.create_mixer("local", dim=16, heads=2, causal=True, window=4)
    for m, held in ((mixer, 10), (local, 4)):
        with torch.no_grad():
            _, state = m.prefill(torch.randn(3, 10, 16))
        # K and V of what is held: batch 3, 2 heads, head size 8, float32
        assert _state_bytes(state) == 2 * 3 * 2 * held * 8 * 4
        assert state.k.numel() * 4 > 3 * 2 * held * 8 * 4  # the buffers hold more room


def test_list_fits_100_columns_and_filters(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 100 and len(lines) == len(aa.list_mixers()) + 4
    assert main(["list", "--form", "chunk", "--attention", "causal", "--family", "delta"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:-3]}
    assert names == {n for n in aa.list_mixers() if "chunk" in aa.mixer_info(n).forms
                     and "causal" in aa.mixer_info(n).patterns
                     and "delta" in aa.mixer_info(n).family.lower()}
    assert names >= {"deltanet", "gated_deltanet"}
    assert main(["list", "--long"]) == 0
    assert max(map(len, capsys.readouterr().out.splitlines())) <= 100
    assert main(["list", "--family", "nothing-like-this"]) == 2


def _cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:3", "tpu"])
def test_devices_are_one_line(device, capsys):
    code = main(["train", "--task", "copy", "--mixer", "gla", "--device", device])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"device {device!r}" in err and "this machine has: auto, cpu" in err


def test_auto_is_the_default_device():
    from attnarena.arena.measure.environment import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert RunConfig(task="copy", mixer="gla").device == "auto"


def test_task_options_are_listed_and_checked(capsys):
    with pytest.raises(ValueError, match="unknown option.*'bogus'.*valid options: data_seed, "
                                         "length, pairs"):
        create_task("mqar", bogus=1)
    assert main(["train", "--task", "mqar", "--mixer", "gla", "--task-option", "lenght=8"]) == 2
    assert "did you mean 'length'?" in capsys.readouterr().err
    assert main(["tasks", "mqar"]) == 0
    out = capsys.readouterr().out
    assert "length = 64" in out and "preset cpu:" in out
    assert set(task_presets("mqar")) == {"cpu", "paper"}


def test_version_and_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "attnarena", "--version"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"attnarena {aa.__version__}"


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


def test_a_closed_standard_output_is_an_error():
    done = subprocess.run(f"{sys.executable} -m attnarena list >&-", shell=True,
                          capture_output=False, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 2 and "standard output is closed" in done.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_standard_output_is_an_error():
    done = subprocess.run(f"{sys.executable} -m attnarena list > /dev/full", shell=True,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode != 0 and "No space left" in done.stderr
