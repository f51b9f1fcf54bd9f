"""``attnarena compress`` end to end: stored runs compressed, rows in the store, the report's
table and plot, saved models that load back to the same outputs."""
import copy
from pathlib import Path

import pytest
import torch
from test_compress import data_for, outputs, tiny

from attnarena.arena.deploy.compressed import load_compressed, save_compressed, stored_bytes
from attnarena.arena.report.compression import pareto
from attnarena.arena.store import Store
from attnarena.cli import main
from attnarena.compress.recipe import apply_recipe, make_step
from conftest import run_tiny_suite


@pytest.mark.parametrize("recipe", [
    [("int8_dynamic", {})], [("int4_weight", {"group_size": 16})], [("fp4", {})],
    [("repquant", {})], [("mixed", {"budget": 4.0})], [("prune_heads", {})],
    [("prune_mlp", {"fraction": 0.25})], [("lowrank", {"keep": 0.5})],
    [("magnitude", {})], [("prune_heads", {}), ("distill", {"steps": 2}),
                          ("int8_weight", {})],
    [("distill", {"steps": 2, "mixer": "gla", "model": {"depth": 1}}),
     ("int_static", {"weight_bits": 4})],
    [("bf16", {})], [("ort_int8", {})], [("prune_heads", {}), ("ort_int8_static", {})],
])
def test_save_then_load_gives_the_same_outputs(tmp_path, recipe):
    task, model = tiny(heads=4)
    resolved = {"task": "mqar", "task_options": {"vocab": 16, "length": 12, "pairs": 2},
                "mixer": "softmax", "mixer_options": {},
                "model": {"dim": 16, "depth": 2, "heads": 4, "mlp_dim": 32}}
    data = data_for(task, model)
    data.build = lambda mixer, options, overrides: (
        task.build_model(mixer, options, {**resolved["model"], **overrides}),
        {**resolved, "mixer": mixer, "mixer_options": options,
         "model": {**resolved["model"], **overrides}})
    steps = [make_step(name, options) for name, options in recipe]
    compressed, reports = apply_recipe(copy.deepcopy(model), steps, data, log=lambda m: None)
    compressed.eval()
    save_compressed(tmp_path / "saved", compressed, resolved, steps, reports)
    loaded = load_compressed(tmp_path / "saved")
    assert torch.equal(outputs(loaded, data), outputs(compressed, data))
    assert stored_bytes(loaded) == stored_bytes(compressed)
    saved = "model.onnx" if recipe[-1][0].startswith("ort") else "model.safetensors"
    assert (tmp_path / "saved" / saved).stat().st_size == stored_bytes(compressed)


def test_a_model_with_top_level_parameters_saves_and_loads(tmp_path):
    from attnarena.tasks import create_task

    torch.manual_seed(0)
    resolved = {"task": "listops", "task_options": {"train_examples": 8, "val_examples": 4,
                                                   "test_examples": 4, "min_length": 8,
                                                   "max_length": 20},
                "mixer": "softmax", "mixer_options": {},
                "model": {"dim": 16, "depth": 1, "heads": 2, "pooling": "cls"}}
    task = create_task("listops", **resolved["task_options"])
    task.prepare()
    model = task.build_model("softmax", {}, resolved["model"]).eval()
    assert any("." not in name for name, _ in model.named_parameters())  # the cls token
    data = data_for(task, model, batches=1, size=4)
    steps = [make_step("int8_dynamic")]
    compressed, reports = apply_recipe(copy.deepcopy(model), steps, data, log=lambda m: None)
    save_compressed(tmp_path / "saved", compressed, resolved, steps, reports)
    assert torch.equal(outputs(load_compressed(tmp_path / "saved"), data),
                       outputs(compressed, data))


def test_pareto_front():
    points = [(1.0, 0.9), (0.5, 0.9), (0.25, 0.5), (0.5, 0.4), (2.0, 0.95)]
    assert pareto(points) == [2, 1, 4]
    assert pareto([(1.0, 3.0), (0.5, 2.0)], higher_is_better=False) == [1]


def test_cli_compress_end_to_end(tmp_path, capsys):
    store, _ = run_tiny_suite(tmp_path, ["softmax"], "steps = 2, batch = 8, eval_every = 2")
    run = Store(store).runs()[0]["id"]
    base = ["compress", run, "--store", str(store), "--out", str(tmp_path), "--quiet",
            "--repeats", "1", "--calibration", "1"]
    assert main([*base, "--method", "int8_dynamic"]) == 0
    recipes = tmp_path / "recipes.toml"
    recipes.write_text('[[recipe]]\nmethod = "int_static"\n\n'
                       '[[recipe]]\nsteps = [{method = "prune_heads", fraction = 0.5},\n'
                       '         {method = "distill", steps = 2}, {method = "fp4"}]\n')
    assert main([*base, "--recipes", str(recipes)]) == 0
    out = capsys.readouterr().out
    assert "## Compressed models" in out and "prune_heads + distill(steps=2) + fp4" in out
    rows = Store(store).compress_rows()
    assert [r["recipe"] for r in rows] == ["float", "int8_dynamic", "int_static",
                                           "prune_heads + distill(steps=2) + fp4"]
    float_row = rows[0]
    assert float_row["outliers"]["max_inf_norm"] > 0
    for row in rows:
        assert 0 <= row["test"] <= 1 and row["run"] == run
        assert set(row["speed"]["model"]) == {"1", "32"}
        assert set(row["speed"]["blocks"]) == {"1", "4"}
    assert rows[1]["bytes"] < float_row["bytes"]
    assert rows[3]["params"] < float_row["params"]
    assert (tmp_path / "compression.png").stat().st_size > 0
    assert "### Activation outliers and 8-bit quantization" in (
        tmp_path / "leaderboard.md").read_text()
    # a stored recipe is reused, not recomputed
    assert main([*base, "--method", "int8_dynamic"]) == 0
    assert len(Store(store).compress_rows()) == 4
    import attnarena as aa
    from attnarena.arena.deploy.compressed import compressed_record

    loaded = aa.load_compressed(rows[3]["folder"])
    assert not loaded.training and not hasattr(loaded, "compression")
    assert compressed_record(rows[3]["folder"])["recipe"][0]["method"] == "prune_heads"

    # a recipe ending in ONNX Runtime: its row says so, and the graph loads back as a model
    # the task's own evaluation runs on
    assert main([*base, "--method", "prune_heads fraction=0.5", "--method", "ort_int8"]) == 0
    table = capsys.readouterr().out
    row = Store(store).compress_rows()[-1]
    assert row["recipe"] == "prune_heads + ort_int8" and row["backend"] == "onnxruntime"
    assert row["runtime"].startswith("onnxruntime ") and 0 <= row["test"] <= 1
    assert set(row["speed"]["model"]) == {"1", "32"} and "blocks" not in row["speed"]
    assert row["reports"][-1]["int8_nodes"] > 0
    assert row["linear_bytes"] < float_row["linear_bytes"] / 3  # int8, half the heads
    line = next(t for t in table.splitlines() if t.startswith("| prune_heads + ort_int8 |"))
    assert line.split(" | ")[1] == "ONNX Runtime" and line.endswith("| - | - |")
    graph = aa.load_compressed(row["folder"])
    assert type(graph).__name__ == "OrtModel" and (Path(row["folder"]) / "model.onnx").is_file()
    from attnarena.arena.run.artifacts import load_run_subject

    subject = load_run_subject(run, results_dir=str(tmp_path))
    assert subject.with_model(graph).quality()["test"] == pytest.approx(row["test"])


def test_cli_compress_refuses_bad_input_in_one_line(tmp_path, capsys):
    store, _ = run_tiny_suite(tmp_path, ["softmax", "mamba2"],
                              "steps = 2, batch = 8, eval_every = 2")
    runs = {r["mixer"]: r["id"] for r in Store(store).runs()}
    run = runs["softmax"]
    base = ["compress", "--store", str(store), "--out", str(tmp_path), "--quiet"]
    cases = [
        ([run, "--method", "zip"], "unknown compression method 'zip'; valid: bf16, distill"),
        ([run, "--method", "ort_int8", "--method", "int8_dynamic"],
         "ort_int8 must be the last step of a recipe"),
        ([run, "--method", "int_static act_bits=1"], "act_bits must be in [2, 8], got 1"),
        ([run, "--method", "magnitude sparsity=1"], "sparsity must be in [0.0, 1.0), got 1"),
        ([run, "--method", "mixed budget=1"], "no assignment meets a budget of 1 bits"),
        (["nope", "--method", "int8_dynamic"], "run 'nope' is not in the store"),
        ([runs["mamba2"], "--method", "prune_heads"],
         "head pruning does not know how mamba2 lays out its heads"),
    ]
    for argv, message in cases:
        assert main([*base, *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as stop:  # argparse: exactly one of the two
        main([*base, run])
    assert stop.value.code == 2
    assert "one of the arguments --method --recipes is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, run, "--method", "int8_dynamic", "--recipes", "r.toml"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert Store(store).compress_rows() == []  # refused before any work was done


def test_a_suite_compresses_its_runs(tmp_path):
    lines = []
    store, counts = run_tiny_suite(
        tmp_path, ["softmax", "mamba2"], "steps = 2, batch = 8, eval_every = 2",
        extra='[[compress]]\nrecipes = [{method = "int8_dynamic"},\n'
              '           {steps = [{method = "prune_heads"}, {method = "int_static"}]}]\n',
        log=lines.append)
    assert counts["compressed"] == 3  # mamba2's heads cannot be pruned: noted, left out
    assert any("prune_heads + int_static left out" in line for line in lines)
    rows = Store(store).compress_rows()
    assert sorted(r["recipe"] for r in rows) == ["float", "float", "int8_dynamic",
                                                 "int8_dynamic", "prune_heads + int_static"]


def test_a_suite_with_a_bad_recipe_is_refused_before_training(tmp_path):
    from attnarena.arena.run.suite import load_suite

    suite = tmp_path / "s.toml"
    suite.write_text('[[runs]]\ntasks = ["copy"]\nmixers = ["softmax"]\n'
                     '[[compress]]\nrecipes = [{method = "int9"}]\n')
    with pytest.raises(ValueError, match="unknown compression method 'int9'"):
        load_suite(str(suite))


def test_side_by_side_times_every_model_round_robin():
    from attnarena.arena.deploy.compress import side_by_side

    calls = []

    def cells_of(name):
        return {("model", "1"): lambda: calls.append(name), ("blocks", "4", "32"): lambda: None}

    speeds = side_by_side(["a", "b"], cells_of, "cpu", repeats=3)
    # a warm-up each, then a, b, a, b, a, b, then one more each for the peak memory
    assert calls == ["a", "b"] + ["a", "b"] * 3 + ["a", "b"]
    assert set(speeds[0]) == {"model", "blocks"} and speeds[1]["blocks"]["4"]["32"]["ms"] >= 0


def test_compress_help_names_every_method(capsys):
    from attnarena.compress import list_methods

    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps the epilog
    assert all(name in shown for name in list_methods()), shown


def test_speed_ups_divide_timings_of_one_call(tmp_path):
    from attnarena.arena.report.compression import compress_markdown

    store, _ = run_tiny_suite(tmp_path, ["softmax"], "steps = 2, batch = 8, eval_every = 2")
    run = Store(store).runs()[0]["id"]
    base = ["compress", run, "--store", str(store), "--out", str(tmp_path), "--quiet",
            "--repeats", "1", "--calibration", "1"]
    assert main([*base, "--method", "int8_dynamic"]) == 0
    first = {r["recipe"]: r for r in Store(store).compress_rows()}
    table = [line for line in compress_markdown(list(first.values())).splitlines()
             if line.startswith("| int8_dynamic")]
    assert main([*base, "--method", "magnitude"]) == 0  # times the float model again
    rows = {r["recipe"]: r for r in Store(store).compress_rows()}
    assert rows["float"]["timing_call"] != first["float"]["timing_call"]
    # the first call's row keeps the baseline it was timed beside, so its line is unchanged
    assert rows["int8_dynamic"] == first["int8_dynamic"]
    assert rows["int8_dynamic"]["baseline_speed"] == first["float"]["speed"]
    assert rows["magnitude"]["baseline_speed"] == rows["float"]["speed"]
    again = [line for line in compress_markdown(list(rows.values())).splitlines()
             if line.startswith("| int8_dynamic")]
    assert again == table
    old = {**rows["int8_dynamic"]}
    old.pop("baseline_speed")  # a row stored before rows kept their call's baseline
    line = [text for text in compress_markdown([rows["float"], old]).splitlines()
            if text.startswith("| int8_dynamic")][0]
    assert line.split(" | ")[9:11] == ["-", "-"]


def test_a_speed_up_inside_the_spread_is_a_tie():
    from attnarena.arena.report.compression import _speed_up

    def cell(ms, half):
        return {"model": {"1": {"ms": ms, "q1_ms": ms - half, "q3_ms": ms + half}}}

    row = {"recipe": "int8", "speed": cell(9.0, 1.0), "baseline_speed": cell(10.0, 1.0)}
    assert _speed_up(row, "model", "1") == "1.11x (tie)"
    row["speed"] = cell(5.0, 0.5)
    assert _speed_up(row, "model", "1") == "2.00x"


def test_compress_reports_progress_of_distillation_and_evaluation(tmp_path, capsys):
    store, _ = run_tiny_suite(tmp_path, ["softmax"], "steps = 2, batch = 8, eval_every = 2")
    run = Store(store).runs()[0]["id"]
    assert main(["compress", run, "--store", str(store), "--out", str(tmp_path), "--repeats",
                 "1", "--calibration", "1", "--method", "distill steps=3"]) == 0
    out = capsys.readouterr().out
    assert "distillation, step 1/3" in out and "distillation, step 3/3" in out
    assert "evaluating distill(steps=3)" in out
