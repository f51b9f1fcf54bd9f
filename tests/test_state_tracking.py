"""State-tracking tasks: the group tables, targets that are running products, and
accuracy recorded per test length."""
import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnarena.tasks import create_task

GROUPS = {"parity": 2, "mod_addition": 5, "word_s3": 6, "word_s5": 120}


def _permutations(n):
    return list(itertools.permutations(range(n)))


def _independent_targets(name, inputs):
    """Running products computed directly: sums modulo n, or permutations applied one
    after another (element a then b maps i to b[a[i]])."""
    if name in ("parity", "mod_addition"):
        return inputs.cumsum(1) % GROUPS[name]
    perms = _permutations(3 if name == "word_s3" else 5)
    out = torch.empty_like(inputs)
    for b in range(inputs.shape[0]):
        state = perms[0]
        for t in range(inputs.shape[1]):
            step = perms[int(inputs[b, t])]
            state = tuple(step[state[i]] for i in range(len(state)))
            out[b, t] = perms.index(state)
    return out


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_tables_are_groups(name):
    table = create_task(name).table()
    n = GROUPS[name]
    assert table.shape == (n, n)
    index = torch.arange(n)
    assert torch.equal(table[0], index) and torch.equal(table[:, 0], index)  # identity
    for row in table:  # every element has an inverse: each row is a permutation
        assert torch.equal(row.sort().values, index)
    a, b, c = (torch.randint(0, n, (200,), generator=torch.Generator().manual_seed(s))
               for s in range(3))
    assert torch.equal(table[table[a, b], c], table[a, table[b, c]])  # associative
    abelian = torch.equal(table, table.T)
    assert abelian == (name in ("parity", "mod_addition"))


@given(st.sampled_from(sorted(GROUPS)), st.integers(1, 12), st.integers(0, 999))
def test_targets_are_running_products(name, length, seed):
    task = create_task(name, length=length)
    batch = task.batch(4, torch.Generator().manual_seed(seed))
    assert batch["inputs"].shape == (4, length) and bool((batch["weights"] == 1).all())
    assert torch.equal(batch["targets"], _independent_targets(name, batch["inputs"]))


def test_lengths_and_options_are_checked():
    task = create_task("word_s5", length=8, test_lengths=[32, 16, 8])
    assert task.generalization_lengths() == (8, 16, 32)
    assert task.sequence_length == 32
    assert task.at_length(16).batch(2, torch.Generator())["inputs"].shape == (2, 16)
    assert create_task("parity").generalization_lengths() == ()
    with pytest.raises(ValueError, match="test_lengths must be a list"):
        create_task("parity", test_lengths=7)
    with pytest.raises(ValueError, match="modulus"):
        create_task("mod_addition", modulus=1)
    with pytest.raises(ValueError, match="tested at its training length only"):
        create_task("mqar").at_length(64)


def test_a_run_records_accuracy_per_length_and_the_leaderboard_shows_it(tmp_path):
    from attnarena.arena.report.leaderboard import leaderboard_markdown
    from attnarena.arena.run.config import RunConfig
    from attnarena.arena.run.runner import run_suite
    from attnarena.arena.store import Store

    suite = tmp_path / "s.toml"
    suite.write_text('[[runs]]\ntasks = ["parity"]\n'
                     'mixers = ["deltanet(negative_eigenvalues=true)"]\n'
                     'train = { steps = 3, batch = 8, eval_every = 3, eval_examples = 16 }\n'
                     'model = { dim = 16, heads = 2 }\n')
    store = tmp_path / "a.sqlite"
    run_suite(str(suite), store_path=store, out_dir=tmp_path, progress=False,
              log=lambda line: None)
    (run,) = Store(store).runs(status="done")
    by_length = run["metrics"]["test_by_length"]
    assert list(by_length) == ["16", "32", "64"]
    assert by_length["16"] == run["metrics"]["test_accuracy"]  # the same test set
    assert all(0.0 <= v <= 1.0 for v in by_length.values())
    board = leaderboard_markdown(Store(store))
    assert "| test accuracy | L=16 | L=32 | L=64 |" in board
    assert RunConfig(task="parity", mixer="gla").resolve()["task_options"]["test_lengths"] \
        == [32, 64]
