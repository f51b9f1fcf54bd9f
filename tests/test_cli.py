import csv
import json

import pytest

import attnarena as aa
from attnarena.arena.speed import SpeedConfig, measure_case, run_speed
from attnarena.options import MixerSpec
from attnarena.cli import main


def test_list_shows_every_mechanism(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:5] == ["name", "family", "complexity", "patterns",
                                               "forms"]
    for name in aa.list_mixers():
        assert any(line.startswith(name + " ") for line in out.splitlines())
    assert "Katharopoulos et al. 2020" in out


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


