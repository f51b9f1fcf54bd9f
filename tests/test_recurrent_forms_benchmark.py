"""benchmarks/recurrent_forms.py on a tiny shape: exact causal attention timed in the same
run, and one row per kernel with its speed-ups over the recurrent form and over SDPA."""
import re

from conftest import load_benchmark

KERNELS = ["linear_attention", "retention", "scalar_gated", "gla", "delta_rule",
           "gated_delta_rule", "mlstm", "selective_scan"]


def test_every_kernel_against_sdpa_in_one_run(capsys):
    load_benchmark("recurrent_forms").main(["--length", "40", "--heads", "2", "--head-dim",
                                            "8", "--state", "4", "--repeats", "1"])
    out = capsys.readouterr().out
    sdpa = re.search(r"SDPA \(is_causal=True\): ([\d.]+) ms", out)
    assert sdpa, out
    for name in KERNELS:
        # a kernel's line ends its "timing..." notice with a carriage return
        rows = [line.split("\r")[-1].split() for line in out.split("\n")
                if line.split("\r")[-1].startswith(name + " ")]
        assert len(rows) == 1, (name, out)
        chunk, recurrent, speedup, vs_sdpa = rows[0][1:5]
        assert float(chunk) >= 0 and float(recurrent) >= 0
        assert speedup.endswith("x") and vs_sdpa.endswith("x")
        assert float(vs_sdpa[:-1]) >= 0  # at this tiny shape SDPA takes microseconds
