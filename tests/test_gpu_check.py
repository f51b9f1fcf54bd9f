"""benchmarks/gpu_check.py: its CPU side (arguments, the reference side of the parity
check, the report) runs here; the GPU side needs a CUDA machine."""
import copy
import json

import pytest
import torch

import attnarena as aa
from conftest import load_benchmark


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


def test_arguments(gpu_check, capsys):
    args = gpu_check.parse_args([])
    assert args.parts == ["parity", "speed", "listops"] and args.budget == 480
    assert args.lengths == [1024, 2048, 4096, 8192, 16384, 32768] and args.steps == 1000
    args = gpu_check.parse_args(["--parts", "speed", "--lengths", "512,2048",
                                 "--speed-mixers", "softmax,gla(chunk_size=32)"])
    assert args.parts == ["speed"] and args.lengths == [512, 2048]
    assert args.speed_mixers == ["softmax", "gla(chunk_size=32)"]
    for bad, says in ((["--parts", "parity,gpu"], "--parts: expected some of"),
                      (["--mechanisms", "softmax,nope"], "unknown mechanism"),
                      (["--lengths", "1k"], "comma-separated integers")):
        with pytest.raises(SystemExit) as raised:
            gpu_check.parse_args(bad)
        assert says in f"{raised.value.code} {capsys.readouterr().err}", bad


def test_cases_cover_every_pattern_and_form(gpu_check):
    cases = gpu_check.parity_cases()
    for name in aa.list_mixers():
        info = aa.mixer_info(name)
        covered = {(p, f) for n, p, f in cases if n == name}
        assert {p for p, _ in covered} == set(info.patterns), name
        if "form" in aa.mixer_options(name):
            assert {f for _, f in covered} == set(info.forms), name


def test_the_comparison_finds_a_difference(gpu_check):
    """The parity check on the CPU against itself is exact, and a changed weight on the
    'device' side is found in outputs and gradients."""
    reference = gpu_check._build("gla", "causal", "chunk", dim=16, heads=2)
    same = gpu_check.compare(reference, copy.deepcopy(reference), "causal", "cpu")
    assert same == {"output": 0.0, "gradient": 0.0}
    changed = copy.deepcopy(reference)
    with torch.no_grad():
        changed.o_proj.weight[0, 0] += 1e-2
    errors = gpu_check.compare(reference, changed, "causal", "cpu")
    assert errors["output"] > gpu_check.FLOAT32_TOLERANCE["output"]
    assert errors["gradient"] > gpu_check.FLOAT32_TOLERANCE["gradient"]
    assert gpu_check.compare_decoding(reference, changed, "cpu") > 1e-4
    # bfloat16 against float32 is within the contract's allowance (1 = its limit)
    assert 0 < gpu_check.compare_bfloat16(reference, "cpu", "causal") < 1


def test_the_whole_check_runs_on_a_cpu(gpu_check, tmp_path, capsys):
    code = gpu_check.main(["--device", "cpu", "--quick", "--mechanisms", "retention",
                           "--speed-mixers", "softmax", "--passes", "fwd,decode",
                           "--steps", "2", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {r["form"] for r in result["parity"]} == {"chunk", "parallel", "recurrent"}
    assert all(r["status"] == "ok" for r in result["parity"])
    assert {(r["pass"], r["length"]) for r in result["speed"]} == {
        ("fwd", 64), ("fwd", 128), ("decode", 64), ("decode", 128)}
    assert result["listops"]["steps"] == 2 and result["listops"]["tokens_per_s"] > 0
    printed = capsys.readouterr().out
    assert "## Parity with the CPU: " in printed and "| retention | causal | recurrent |" in printed
    assert (tmp_path / "gpu_check.md").read_text().strip() == printed.strip()


def test_a_part_past_its_time_is_listed_as_skipped(gpu_check):
    rows = gpu_check.check_parity("cpu", ["softmax"], deadline=0.0)
    assert rows and all(r["status"] == "skipped (time)" for r in rows)
    rows = gpu_check.check_speed("cpu", ["softmax"], [64], ["fwd"], deadline=0.0)
    assert rows == [{"mixer": "softmax", "pass": "fwd", "length": 64,
                     "status": "skipped (time)"}]
