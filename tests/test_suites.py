"""Suites: their size counted before anything is built, bad files refused in one line."""
import time

import pytest

from attnarena.arena.suite import SuiteError, count_runs, load_suite
from attnarena.cli import main


def test_a_billion_run_suite_is_refused_within_a_second(tmp_path):
    suite = tmp_path / "huge.toml"
    values = ", ".join(str(i) for i in range(1000))
    suite.write_text(f"""[[runs]]
tasks = ["copy"]
mixers = ["softmax"]
seeds = [{values}]
train = {{ lr = [{", ".join(f"{1e-4 * (i + 1):g}" for i in range(1000))}] }}
model = {{ dim = [{", ".join(str(16 + i) for i in range(1000))}] }}
""")
    start = time.perf_counter()
    with pytest.raises(SuiteError, match="1,000,000,000 runs, more than the limit of 5,000"):
        load_suite(str(suite))
    assert time.perf_counter() - start < 1.0


def test_the_run_limit_can_be_raised_and_the_count_is_the_sweeps_shape(tmp_path):
    groups = [{"tasks": ["copy"], "mixers": ["softmax", "gla"], "seeds": [0, 1, 2],
               "train": {"lr": [1e-3, 1e-4]}, "model": {"dim": 16}}]
    assert count_runs(groups) == 2 * 3 * 2
    suite = tmp_path / "s.toml"
    suite.write_text('[[runs]]\ntasks = ["copy"]\nmixers = ["softmax", "gla"]\n'
                     'seeds = [0, 1, 2]\ntrain = { lr = [1e-3, 1e-4] }\n')
    with pytest.raises(SuiteError, match="12 runs"):
        load_suite(str(suite), max_runs=11)
    assert len(load_suite(str(suite), max_runs=12).runs) == 12


def test_many_unknown_keys_are_named_by_the_first_few_and_counted(tmp_path):
    suite = tmp_path / "s.toml"
    keys = "\n".join(f"k{i} = 1" for i in range(300))
    suite.write_text(f'[[runs]]\ntasks = ["copy"]\nmixers = ["softmax"]\n{keys}\n')
    with pytest.raises(SuiteError) as caught:
        load_suite(str(suite))
    message = str(caught.value)
    assert "and 295 more (300 in all)" in message and len(message) < 400


def test_a_deeply_nested_suite_names_its_file(tmp_path):
    suite = tmp_path / "deep.toml"
    suite.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(SuiteError, match=str(suite)):
        load_suite(str(suite))


@pytest.mark.parametrize("argv", [["run", "--mixers", ""], ["run", "--tasks", " , "],
                                  ["speed", "--mixers", ""]])
def test_an_empty_filter_is_an_error_not_everything(tmp_path, capsys, argv):
    assert main([*argv, "--store", str(tmp_path / "a.sqlite")]
                if argv[0] == "run" else argv) == 2
    assert "was given no names" in capsys.readouterr().err
    assert not (tmp_path / "a.sqlite").exists()


def test_a_negative_time_budget_is_refused(capsys):
    assert main(["speed", "--mixers", "softmax", "--time-budget", "-1"]) == 2
    assert "time_budget must be a finite number" in capsys.readouterr().err
