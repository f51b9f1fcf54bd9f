"""Linearization by attention transfer: LoRA, the two stages, the agreement measures, and
`attnarena linearize` end to end on a pretrained encoder and on an arena run."""
import copy
import re

import pytest
import torch

from attnarena.arena.store import Store
from attnarena.cli import main
from attnarena.linearize import LinearizeConfig, LoRALinear, add_lora, merge_lora
from attnarena.pretrained.agreement import agreement
from conftest import run_tiny_suite


def test_lora_starts_as_the_identity_and_merges_exactly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4))
    x = torch.randn(3, 6)
    before = model(x)
    assert add_lora(model, lambda name: name == "0", rank=2) == ["0"]
    assert isinstance(model[0], LoRALinear) and isinstance(model[2], torch.nn.Linear)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    with torch.no_grad():
        model[0].lora_B.normal_()
    adapted = model(x)
    assert not torch.allclose(adapted, before)
    assert merge_lora(model) == 1 and type(model[0]) is torch.nn.Linear
    torch.testing.assert_close(model(x), adapted, rtol=1e-6, atol=1e-6)


def test_lora_rejects_a_rank_above_the_layer():
    with pytest.raises(ValueError, match="rank must be at most min"):
        LoRALinear(torch.nn.Linear(4, 3), rank=4)
    with pytest.raises(ValueError, match="no linear layer matched"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), lambda name: False)


def test_agreement_measures():
    torch.manual_seed(0)
    a = torch.randn(30, 8)
    same = agreement(a, a.clone())
    assert same == pytest.approx({"mean_cosine": 1.0, "top10_overlap": 1.0, "spearman": 1.0})
    noisy = agreement(a, a + 0.5 * torch.randn(30, 8))
    assert 0 < noisy["mean_cosine"] < 1 and noisy["top10_overlap"] < 1
    stats = pytest.importorskip("scipy.stats")
    an, bn = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(
        a + 0.5 * torch.randn(30, 8), dim=-1)
    upper = torch.triu(torch.ones(30, 30, dtype=torch.bool), 1)
    expected = stats.spearmanr((an @ an.T)[upper].numpy(), (bn @ bn.T)[upper].numpy())[0]
    assert agreement(a, bn)["spearman"] == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="need more than 10 sentences"):
        agreement(a[:5], a[:5])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="loss must be one of"):
        LinearizeConfig(loss="kl")
    with pytest.raises(ValueError, match="transfer_steps must be an int >= 0"):
        LinearizeConfig(transfer_steps=-1)


# -- the pretrained encoder (needs the pretrained extra) ----------------------------------------

@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    from attnarena.pretrained import load_pretrained

    return load_pretrained("minilm")


@pytest.mark.parametrize("loss", ["mse", "attention"])
def test_attention_transfer_lowers_each_layers_matching_loss(minilm, loss):
    from attnarena.linearize import attention_transfer, transfer_losses
    from attnarena.pretrained import EncoderSubject, swap_attention
    from attnarena.pretrained.corpus import corpus_split, sentence_batches

    teacher = EncoderSubject.of(minilm)
    student = copy.deepcopy(teacher)
    swap_attention(student.model, "hedgehog", keep_softmax=[5])
    batches = sentence_batches(minilm, corpus_split("train"), 8, 32, 6, seed=0)
    before = transfer_losses(teacher, student, batches[:2], loss)
    info = attention_transfer(teacher, student, batches, loss=loss, lr=3e-2)
    after = transfer_losses(teacher, student, batches[:2], loss)
    assert info["steps"] == 6 and info["trained_parameters"] == 5 * 12 * 32 * 32
    assert set(before) == set(range(5))
    assert all(after[i] < before[i] for i in before), (before, after)


def test_attention_loss_needs_attention_weights(minilm):
    from attnarena.linearize import attention_transfer
    from attnarena.pretrained import EncoderSubject, swap_attention
    from attnarena.pretrained.corpus import corpus_split, sentence_batches

    teacher = EncoderSubject.of(minilm)
    student = copy.deepcopy(teacher)
    swap_attention(student.model, "gla", layers=[0])
    batches = sentence_batches(minilm, corpus_split("train"), 2, 16, 1, seed=0)
    with pytest.raises(ValueError, match="gla does not expose"):
        attention_transfer(teacher, student, batches, loss="attention")


def test_linearize_encoder_both_stages_then_save_and_load(minilm, tmp_path):
    from attnarena.linearize import linearize_subject
    from attnarena.pretrained import EncoderSubject, load_pretrained
    from attnarena.pretrained.corpus import corpus_split

    config = LinearizeConfig(mixer="cosine", keep_softmax=(0,), transfer_steps=2,
                             finetune_steps=2, batch_size=4, max_length=24)
    teacher = EncoderSubject.of(minilm, train=corpus_split("train")[:40])
    student, info = linearize_subject(teacher, config)
    assert info["transfer"]["trained_parameters"] == 5 * 12  # cosine's length powers
    assert info["finetune"]["trained_parameters"] == 5 * 4 * 2 * 8 * 384
    assert not any("lora" in n for n, _ in student.model.named_parameters())  # merged
    assert teacher.model is minilm.model and not teacher.is_swapped(1)  # left unchanged
    student.save(tmp_path / "m")
    sentences = corpus_split("test")[:6]
    assert torch.equal(load_pretrained(tmp_path / "m").encode(sentences),
                       student.encoder.encode(sentences))


def test_cli_linearize_a_pretrained_encoder_end_to_end(minilm, tmp_path, capsys):
    store = tmp_path / "a.sqlite"
    args = ["linearize", "--model", "minilm", "--mixer", "hedgehog", "--keep-softmax", "0,5",
            "--steps", "2", "--batch", "4", "--lengths", "16,32", "--eval-sentences", "40",
            "--store", str(store), "--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "## Linearized pretrained encoders" in out and "| minilm | hedgehog | 0,5 |" in out
    rows = Store(store).linearize_rows()
    assert [r["stage"] for r in rows] == ["original", "transfer", "finetune"]
    for r in rows:
        assert set(r["speed"]) == {"16", "32"} and r["speed"]["32"]["ms"] > 0
        assert 0 < r["mean_cosine"] <= 1 + 1e-9
    for r in rows[1:]:  # each timed beside the original in its own call
        assert set(r["baseline_speed"]) == {"16", "32"}
        assert r["baseline_speed"] != rows[0]["speed"]
        ratio = r["baseline_speed"]["32"]["ms"] / r["speed"]["32"]["ms"]
        assert f"({ratio:.2f}x)" in out
    assert rows[1]["params_added"] == 4 * 12 * 32 * 32
    assert (tmp_path / "linearization.png").is_file()
    assert "Linearized pretrained encoders" in (tmp_path / "leaderboard.md").read_text()
    assert (tmp_path / "linearize").is_dir()
    # a second call reuses the stored rows
    assert main(args) == 0
    assert len(Store(store).linearize_rows()) == 3
    # timing again keeps the agreement and the order, and times every row
    assert main(["linearize", "--model", "minilm", "--remeasure-speed", "--lengths", "24",
                 "--store", str(store), "--out", str(tmp_path), "--quiet"]) == 0
    again = Store(store).linearize_rows()
    assert [r["stage"] for r in again] == ["original", "transfer", "finetune"]
    assert [r["mean_cosine"] for r in again] == [r["mean_cosine"] for r in rows]
    assert all(set(r["speed"]) == {"24"} for r in again)
    assert all(set(r["baseline_speed"]) == {"24"} for r in again[1:])


def test_cli_linearize_errors_are_one_line(tmp_path, capsys):
    store = str(tmp_path / "a.sqlite")
    with pytest.raises(SystemExit):  # argparse: one of --model and --run is required
        main(["linearize", "--mixer", "hedgehog", "--store", store])
    assert "one of the arguments --model --run is required" in capsys.readouterr().err
    assert main(["linearize", "--run", "nope", "--mixer", "gla", "--store", store]) == 2
    assert "run 'nope' is not in the store" in capsys.readouterr().err
    assert main(["linearize", "--run", "nope", "--store", store]) == 2
    assert "--mixer is required" in capsys.readouterr().err


def test_cli_linearize_pretrained_errors(minilm, tmp_path, capsys):
    store = str(tmp_path / "a.sqlite")
    base = ["linearize", "--store", store, "--out", str(tmp_path), "--steps", "1"]
    assert main([*base, "--model", "minilm", "--mixer", "mamba"]) == 2
    assert "'mamba' cannot reuse" in capsys.readouterr().err
    assert main([*base, "--model", "minilm", "--mixer", "hedgehog", "--keep-softmax", "6"]) == 2
    assert "layer index 6 is out of range: the model has 6" in capsys.readouterr().err
    assert main([*base, "--model", "bert-base", "--mixer", "hedgehog"]) == 2
    assert "unknown pretrained model 'bert-base'" in capsys.readouterr().err
    assert main([*base, "--model", "minilm", "--mixer", "hedgehog", "--keep-softmax",
                 "auto:6"]) == 2
    assert "cannot choose 6 layers to keep softmax" in capsys.readouterr().err
    assert Store(store).linearize_rows() == []  # refused before the original was measured


# -- arena runs ----------------------------------------------------------------------------------

def test_transfer_lowers_each_arena_mixers_matching_loss(tmp_path):
    from attnarena.arena.run.artifacts import load_run_subject
    from attnarena.linearize import attention_transfer, swap, transfer_losses

    store, _ = run_tiny_suite(tmp_path, ["softmax"], "steps = 20, batch = 8, eval_every = 20")
    run = Store(store).runs()[0]
    teacher = load_run_subject(run["id"], results_dir=tmp_path)
    student = copy.deepcopy(teacher)
    config = LinearizeConfig(mixer="hedgehog", transfer_steps=10)
    swapped = swap(student, config)
    assert swapped == list(range(len(teacher.blocks()))) and student.is_swapped(0)
    assert not teacher.is_swapped(0)
    # the new mixer took over the trained projections (copies, not the teacher's own)
    assert student.attention_module(0).q_proj is not teacher.attention_module(0).q_proj
    torch.testing.assert_close(student.attention_module(0).q_proj.weight,
                               teacher.attention_module(0).q_proj.weight, rtol=0, atol=0)
    batches = teacher.linearize_batches("transfer", config, "cpu")
    held_out = [teacher.batch(8, 10**7, "cpu")]
    before = transfer_losses(teacher, student, held_out)
    attention_transfer(teacher, student, batches, lr=3e-2)
    after = transfer_losses(teacher, student, held_out)
    assert all(after[i] < before[i] for i in swapped), (before, after)


def test_cli_linearize_an_arena_run_against_scratch(tmp_path, capsys):
    store, _ = run_tiny_suite(tmp_path, ["softmax", "gla"], "steps = 6, batch = 8, eval_every = 6")
    runs = {r["mixer"]: r["id"] for r in Store(store).runs()}
    base = ["linearize", "--store", str(store), "--out", str(tmp_path), "--quiet"]
    assert main([*base, "--run", runs["softmax"], "--mixer", "hedgehog", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "## Linearized arena models" in out
    rows = Store(store).linearize_rows()
    assert [r["stage"] for r in rows] == ["original", "transfer", "finetune", "scratch"]
    assert [r["steps"] for r in rows[1:]] == [3, 6, 6]
    assert all(0 <= r["test"] <= 1 for r in rows)
    # linear attention adds no parameters: stage 1 has nothing to train
    assert main([*base, "--run", runs["softmax"], "--mixer", "linear", "--steps", "3"]) == 0
    assert [r["steps"] for r in Store(store).linearize_rows()[4:]] == [0, 3, 6]
    assert main([*base, "--run", runs["gla"], "--mixer", "linear"]) == 2
    assert "trained 'gla'; linearization starts from a softmax run" in capsys.readouterr().err


def test_a_suite_linearizes_its_softmax_runs_at_each_teachers_seed(tmp_path):
    suite = ("seeds = [0, 1]\n[[linearize]]\nmixers = [\"hedgehog\"]\ntransfer_steps = 1\n"
             "finetune_steps = 2\n")
    store, counts = run_tiny_suite(tmp_path, ["softmax", "linear"],
                                   "steps = 2, batch = 8, eval_every = 2", extra=suite)
    assert counts["linearized"] == 2  # the two softmax teachers; linear's runs are not
    rows = Store(store).linearize_rows()
    teachers = {r["id"]: r["seed"] for r in Store(store).runs() if r["mixer"] == "softmax"}
    assert sorted((r["teacher_seed"], r["stage"]) for r in rows) == sorted(
        (seed, stage) for seed in (0, 1)
        for stage in ("original", "transfer", "finetune", "scratch"))
    for r in rows:
        assert teachers[r["source"]] == r["teacher_seed"]
        if r["stage"] != "original":
            assert r["recipe"]["seed"] == r["teacher_seed"]  # each at its teacher's seed
    assert [r["steps"] for r in rows if r["stage"] == "scratch"] == [3, 3]
    board = (tmp_path / "leaderboard.md").read_text()
    assert "| copy | hedgehog | finetune | 3 | 2 | 0,1 |" in board
    # a second call reuses every stored row
    _, again = run_tiny_suite(tmp_path, ["softmax", "linear"],
                              "steps = 2, batch = 8, eval_every = 2", extra=suite)
    assert again["linearized"] == 2 and len(Store(store).linearize_rows()) == 8


@pytest.mark.parametrize("table, message", [
    ("tasks = [\"copy\"]", "a [[linearize]] table needs mixers"),
    ("mixers = [\"3*gla+softmax\"]", "is a stack; linearization swaps one mechanism"),
    ("mixers = [\"hedgehgo\"]", "hedgehog"),
    ("mixers = [\"mamba\"]", "'mamba' cannot take over softmax attention's query"),
    ("mixers = [\"softmax\"]", "softmax is what linearization starts from"),
    ("mixers = [\"gla(rank=2)\"]", "rank"),
    ("mixers = [\"gla\"]\nsteps = -1", "transfer_steps"),
    ("mixers = [\"gla\"]\nloss = \"kl\"", "loss must be one of"),
    ("mixers = [\"gla\"]\nlr = 1", "unknown linearize key(s) 'lr'"),
])
def test_a_suite_with_a_bad_linearize_table_is_refused_before_training(tmp_path, table,
                                                                        message):
    from attnarena.arena.run.suite import SuiteError, load_suite

    suite = tmp_path / "s.toml"
    suite.write_text(f'[[runs]]\ntasks = ["copy"]\nmixers = ["softmax"]\n[[linearize]]\n{table}\n')
    with pytest.raises(SuiteError, match=re.escape(message)):
        load_suite(str(suite))


def test_an_interrupted_linearization_resumes_after_attention_transfer(minilm, tmp_path,
                                                                        monkeypatch):
    from attnarena.arena.deploy.linearize import linearize_pretrained
    from attnarena.linearize import stages

    config = LinearizeConfig(mixer="hedgehog", transfer_steps=2, finetune_steps=2,
                             batch_size=4, max_length=24)
    kwargs = dict(store_path=tmp_path / "a.sqlite", results_dir=tmp_path, lengths=[16],
                  batch=2, eval_sentences=20, log=lambda line: None)
    finetune = stages.finetune

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "finetune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        linearize_pretrained("minilm", config, **kwargs)
    stored = [r["stage"] for r in Store(tmp_path / "a.sqlite").linearize_rows()]
    assert stored == ["original", "transfer"]

    def no_second_transfer(*args, **kw):
        raise AssertionError("attention transfer ran again")

    monkeypatch.setattr(stages, "finetune", finetune)
    monkeypatch.setattr(stages, "attention_transfer", no_second_transfer)
    rows = linearize_pretrained("minilm", config, **kwargs)
    assert [r["stage"] for r in rows] == ["original", "transfer", "finetune"]
    assert not any((tmp_path / "linearize").glob("*/after_transfer*"))


def test_linearize_says_what_it_is_doing_and_the_time_left(minilm, tmp_path, capsys):
    args = ["linearize", "--model", "minilm", "--mixer", "hedgehog", "--steps", "2",
            "--batch", "2", "--lengths", "16", "--eval-sentences", "12",
            "--store", str(tmp_path / "a.sqlite"), "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "attention transfer, step 1/2" in out and "about" in out and "left" in out
    assert "fine-tuning, step 2/2" in out and "after finetune: measuring hedgehog" in out
    assert main([*args, "--rerun", "--quiet"]) == 0
    assert "step" not in capsys.readouterr().out.split("## Linearized")[0]
