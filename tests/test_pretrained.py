"""A real pretrained model in the arena: all-MiniLM-L6-v2 loaded offline, its attention
swapped for arena mechanisms, saved and loaded."""
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnarena import mixer_info  # noqa: E402
from attnarena.pretrained import (  # noqa: E402
    MissingExtraError,
    attention_layers,
    load_pretrained,
    model_directory,
    swap_attention,
    swappable_mixers,
)
from conftest import TEST_OPTIONS  # noqa: E402

SENTENCES = ["A man is eating food.",
             "The quick brown fox jumps over the lazy dog near the bank of the river.",
             "Lists are mutable sequences.", "Hello"]


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained("minilm")


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=64)
    return transformers.AutoModel.from_config(config, attn_implementation="sdpa").eval()


def test_minilm_embeddings_equal_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(model_directory("minilm")), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(minilm.encode(SENTENCES), expected, rtol=0, atol=1e-5)


def test_minilm_embeddings_are_normalized_mean_pooling_of_the_transformers_forward(minilm):
    directory = model_directory("minilm")
    model = transformers.AutoModel.from_pretrained(directory).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    keep = batch["attention_mask"][..., None].float()
    pooled = (states * keep).sum(1) / keep.sum(1)
    expected = pooled / pooled.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(minilm.encode(SENTENCES), expected, rtol=0, atol=1e-6)
    assert minilm.encode(SENTENCES).shape == (4, 384)
    assert len(attention_layers(minilm.model)) == 6


def test_softmax_swapped_in_reproduces_the_original_exactly():
    encoder = load_pretrained("minilm")
    ids, keep = encoder.tokenize(SENTENCES)
    with torch.no_grad():
        before = encoder(ids, keep)
        swapped = swap_attention(encoder.model, "softmax")
        after = encoder(ids, keep)
    assert swapped == list(range(6))
    real = keep.bool()
    assert torch.equal(after[real], before[real])


@pytest.mark.parametrize("name", swappable_mixers())
def test_each_swappable_mechanism_runs_with_padding(name):
    """A padded batch gives each sentence's real tokens what the sentence gives alone."""
    caveat = mixer_info(name).padding_caveat
    if caveat is not None:  # by design, not a leak: the registry says why
        pytest.skip(f"padding changes {name}'s outputs: {caveat}; test_mixer_contract "
                    "shows it does and that padded tokens do not leak")
    model = tiny_bert()
    options = {k: v for k, v in TEST_OPTIONS.get(name, {}).items()}
    swap_attention(model, name, keep_softmax=[1], **options)
    model.eval()  # running statistics (Transformer-VQ's codebook) stay as they are
    lengths = [7, 3, 5]
    ids = torch.randint(1, 50, (3, 7))
    keep = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    ids = ids.masked_fill(~keep, 0)
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=keep.long()).last_hidden_state
        for row, length in enumerate(lengths):
            alone = model(input_ids=ids[row:row + 1, :length]).last_hidden_state
            torch.testing.assert_close(batch[row, :length], alone[0], rtol=1e-4, atol=1e-5)


def test_swapped_projections_are_the_pretrained_modules():
    model = tiny_bert()
    query = attention_layers(model)[0].self.query
    swap_attention(model, "gla", layers=[0])
    mixer = attention_layers(model)[0].self.mixer
    assert mixer.q_proj is query and mixer.key_dim == 16  # gla takes full-width keys
    assert isinstance(mixer.o_proj, torch.nn.Identity)


def test_a_swapped_model_saves_and_loads_to_the_same_outputs(tmp_path, minilm):
    encoder = load_pretrained("minilm")
    swap_attention(encoder.model, "hedgehog", keep_softmax=[0, 5])
    with torch.no_grad():
        for block in attention_layers(encoder.model)[1:5]:
            block.self.mixer.feature_weight.add_(0.1 * torch.randn_like(
                block.self.mixer.feature_weight))
    encoder.save(tmp_path / "saved")
    loaded = load_pretrained(tmp_path / "saved")
    kinds = [type(b.self).__name__ for b in attention_layers(loaded.model)]
    assert kinds[0] == kinds[5] == "BertSelfAttention"
    assert set(kinds[1:5]) == {"ArenaSelfAttention"}
    assert torch.equal(loaded.encode(SENTENCES), encoder.encode(SENTENCES))


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown pretrained model 'minilmm'.*did you mean"):
        load_pretrained("minilmm")
    model = tiny_bert()
    with pytest.raises(ValueError, match="'mamba' cannot reuse .*mixers that can: .*hedgehog"):
        swap_attention(model, "mamba")
    with pytest.raises(ValueError, match="layer index 2 is out of range: the model has 2"):
        swap_attention(model, "linear", keep_softmax=[2])
    with pytest.raises(ValueError, match="unknown option"):
        swap_attention(model, "linear", window=3)
    with pytest.raises(ValueError, match="does not support the 'self' pattern"):
        swap_attention(model, "log_linear")


def test_missing_extra_is_one_line_naming_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'attnarena\[pretrained\]'"):
        load_pretrained("minilm")


CUSTOM_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


def _folder_asking_for_code(tmp_path, entry="config.json"):
    """A copy of MiniLM's folder whose ``entry`` names a Python file of its own (which would
    write a marker file if it ran)."""
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(model_directory("minilm"), folder)
    marker = tmp_path / "marker"
    (folder / "evil.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config = json.loads((folder / entry).read_text()) if (folder / entry).exists() else {}
    config["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilConfig",
                          "AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / entry).write_text(json.dumps(config))
    return folder, marker


@pytest.mark.parametrize("entry", ["config.json", "tokenizer_config.json"])
def test_a_folder_asking_for_custom_code_is_refused_without_running_it(tmp_path, entry):
    folder, marker = _folder_asking_for_code(tmp_path, entry)
    with pytest.raises(ValueError, match="custom code.*refused"):
        load_pretrained(folder)
    assert not marker.exists()


def test_the_cli_refuses_custom_code_at_once_with_stdin_open(tmp_path):
    import subprocess

    folder, marker = _folder_asking_for_code(tmp_path)
    for command in (["compress", "--model", str(folder), "--method", "magnitude"],
                    ["linearize", "--model", str(folder), "--mixer", "hedgehog",
                     "--steps", "1"]):
        # "y" waiting on stdin: a prompt would take it and run the folder's code
        done = subprocess.run([sys.executable, "-m", "attnarena", *command, "--store",
                               str(tmp_path / "a.sqlite"), "--out", str(tmp_path / "out")],
                              input="y\n", capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "custom code" in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not marker.exists()


@pytest.fixture(scope="module")
def saved_swap(tmp_path_factory):
    encoder = load_pretrained("minilm")
    swap_attention(encoder.model, "hedgehog", layers=[1])
    return encoder.save(tmp_path_factory.mktemp("swap") / "saved")


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(layers="1e3"), "expected"),
    (lambda r: r.update(layers={"1e3": r["layers"]["1"]}), "'1e3' is not a layer index"),
    (lambda r: r.update(layers={"9": r["layers"]["1"]}), "'9' is not a layer index of this 6"),
    (lambda r: r["layers"]["1"].pop("options"), "layer 1: expected"),
    (lambda r: r["layers"]["1"]["options"].update(feature_size=10**9), "refused"),
    (lambda r: r["layers"]["1"]["options"].update(nonsense=1), "unknown option"),
    (lambda r: r.update(pooling={"max_length": "long"}), "pooling must hold"),
])
def test_a_damaged_swap_record_is_one_line_naming_the_file(tmp_path, saved_swap, change,
                                                           message):
    import json
    import shutil

    folder = shutil.copytree(saved_swap, tmp_path / "saved")
    record = json.loads((folder / "attnarena_swap.json").read_text())
    change(record)
    (folder / "attnarena_swap.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=message) as caught:
        load_pretrained(folder)
    assert "attnarena_swap.json" in str(caught.value)
