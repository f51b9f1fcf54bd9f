"""benchmarks/streamed_forward.py: both passes on tiny shapes, one table row per mechanism,
the class-wide piece settings restored after."""
import pytest

from attnarena.mixers.base import Mixer
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("streamed_forward")


@pytest.mark.parametrize("pass_,extra,tokens", [("fwdbwd", ["--train-rows", "8"], 4),
                                                ("fwd", [], Mixer.stream_tokens)])
def test_whole_and_pieces_side_by_side(bench, capsys, pass_, extra, tokens):
    before = (Mixer.stream_tokens, Mixer.train_rows)
    bench.main(["--pass", pass_, "--lengths", "24", "--mixers", "gla", "--repeats", "1",
                "--batch", "2", "--threads", "1", *extra])
    out = capsys.readouterr().out
    assert f"in pieces of {tokens}:" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| gla")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0]]
    assert cells[1] == "24" and all(c and c != "-" for c in cells[2:])
    assert float(cells[3]) >= 0 and float(cells[5]) >= 0
    assert (Mixer.stream_tokens, Mixer.train_rows) == before
