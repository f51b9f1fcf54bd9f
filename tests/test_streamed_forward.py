"""benchmarks/streamed_forward.py: both passes on tiny shapes, one table row per mechanism,
each mechanism in its own class's pieces, the class-wide piece settings restored after."""
import pytest

from attnarena.mixers.base import Mixer
from attnarena.mixers.gla import GatedLinearAttention
from attnarena.mixers.mamba import Mamba2
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("streamed_forward")


@pytest.mark.parametrize("pass_,extra,tokens", [
    ("fwdbwd", ["--train-rows", "8"], {"gla": 4, "mamba2": 4}),
    ("fwd", [], {"gla": Mixer.stream_tokens, "mamba2": Mamba2.stream_tokens})])
def test_whole_and_pieces_side_by_side(bench, capsys, pass_, extra, tokens):
    before = (Mixer.stream_tokens, Mixer.train_rows, Mamba2.stream_tokens,
              "stream_tokens" in GatedLinearAttention.__dict__,
              "train_rows" in Mamba2.__dict__)
    bench.main(["--pass", pass_, "--lengths", "24", "--mixers", "gla,mamba2", "--repeats",
                "1", "--batch", "2", "--threads", "1", *extra])
    out = capsys.readouterr().out
    for name in ("gla", "mamba2"):
        rows = [line.split("|")[1:-1] for line in out.splitlines()
                if line.startswith(f"| {name} ")]
        assert len(rows) == 1
        cells = [c.strip() for c in rows[0]]
        assert cells[1] == "24" and cells[4] == str(tokens[name])  # each its own pieces
        assert all(c and c != "-" for c in cells[2:])
        assert float(cells[3]) >= 0 and float(cells[6]) >= 0
    assert Mamba2.stream_tokens < Mixer.stream_tokens  # wider intermediates, fewer tokens
    assert (Mixer.stream_tokens, Mixer.train_rows, Mamba2.stream_tokens,
            "stream_tokens" in GatedLinearAttention.__dict__,
            "train_rows" in Mamba2.__dict__) == before
