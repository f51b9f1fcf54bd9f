"""Compression recipes on the real pretrained MiniLM (the pretrained and compress extras)."""
import copy

import pytest
import torch

pytest.importorskip("transformers")

from attnarena.arena.deploy.compress import compress_pretrained  # noqa: E402
from attnarena.arena.deploy.compressed import compressed_record, load_compressed  # noqa: E402
from attnarena.arena.store import Store  # noqa: E402
from attnarena.cli import main  # noqa: E402
from attnarena.compress.prune import head_groups, mlp_units  # noqa: E402
from attnarena.compress.recipe import make_step  # noqa: E402


@pytest.fixture(scope="module")
def minilm():
    from attnarena.pretrained import load_pretrained

    return load_pretrained("minilm")


def test_bert_heads_prune_like_zeroing_their_outputs(minilm):
    ids, mask = minilm.tokenize(["A short sentence.", "Another, somewhat longer sentence."])
    groups = head_groups(minilm.model)
    assert len(groups) == 6 and groups[0].heads == 12
    zeroed, pruned = copy.deepcopy(minilm.model), copy.deepcopy(minilm.model)
    width = 384 // 12
    with torch.no_grad():
        for h in (2, 5, 11):
            zeroed.encoder.layer[1].attention.output.dense.weight[:, h * width:(h + 1) * width] = 0
    group = next(g for g in head_groups(pruned) if g.name == "encoder.layer.1.attention.self")
    group.prune([h for h in range(12) if h not in (2, 5, 11)])
    assert pruned.encoder.layer[1].attention.self.query.out_features == 9 * width
    expected = zeroed(input_ids=ids, attention_mask=mask).last_hidden_state
    got = pruned(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-5)
    assert len(mlp_units(minilm.model)) == 6


def test_compress_minilm_stores_rows_and_loads_back(minilm, tmp_path):
    store = tmp_path / "a.sqlite"
    recipes = [[make_step("int8_dynamic")],
               [make_step("prune_heads", {"fraction": 0.25}), make_step("distill", {"steps": 2})]]
    rows = compress_pretrained("minilm", recipes, store_path=store, results_dir=tmp_path,
                               calibration=1, batch=8, length=16, eval_sentences=40,
                               repeats=1, log=lambda line: None)
    assert [r["recipe"] for r in rows] == ["float", "int8_dynamic",
                                           "prune_heads(fraction=0.25) + distill(steps=2)"]
    float_row, int8, pruned = rows
    assert float_row["mean_cosine"] == pytest.approx(1.0)
    assert 0.95 < int8["mean_cosine"] < 1.0
    assert int8["linear_bytes"] < 0.3 * float_row["linear_bytes"]
    assert pruned["reports"][0]["heads_after"] == 54 and pruned["params"] < float_row["params"]
    assert float_row["outliers"]["max_inf_norm"] > 1
    assert set(float_row["speed"]["blocks"]) == {"1", "4"}
    assert len(Store(store).compress_rows()) == 3
    from attnarena.pretrained.agreement import agreement
    from attnarena.pretrained.corpus import corpus_split

    test = corpus_split("test")[:40]
    reference = minilm.encode(test)
    for row in rows[1:]:  # the saved model scores what the compressed one scored
        loaded = load_compressed(row["folder"])
        assert agreement(reference, loaded.encode(test))["mean_cosine"] == pytest.approx(
            row["mean_cosine"], abs=1e-6)
        assert compressed_record(row["folder"])["recipe"][0]["method"] == \
            row["steps"][0]["method"]


def test_cli_compress_minilm_refuses_a_student_of_another_mechanism(tmp_path, capsys):
    assert main(["compress", "--model", "minilm", "--method", "distill mixer=gla",
                 "--store", str(tmp_path / "a.sqlite"), "--out", str(tmp_path)]) == 2
    assert "use attnarena linearize" in capsys.readouterr().err
    assert main(["compress", "run-id", "--model", "minilm", "--method", "int8_dynamic"]) == 2
    assert "not both" in capsys.readouterr().err
