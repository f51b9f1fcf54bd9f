"""``attnarena export --format onnx``: a trained run, or a pretrained encoder, as an ONNX
graph (``attnarena.compress.ort.export_onnx``: batch and length dynamic, checked against
the torch model in ONNX Runtime at five shapes) with what it takes to call it; a causal
LM's decoding step too (``attnarena.compress.ort_decode``)."""
from __future__ import annotations

import json
from pathlib import Path


def _out(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; name a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _readme(graph, title: str, load: str) -> str:
    from attnarena.compress.ort import OPSET

    inputs = ", ".join(f"`{n}`" for n in graph.signature.inputs)
    outputs = graph.session.get_outputs()
    return (f"# {title}\n\n`model.onnx`: the model's forward as an ONNX graph (opset "
            f"{OPSET}), batch and length dynamic, checked against the torch "
            f"model in ONNX Runtime. Inputs {inputs}; outputs "
            f"{', '.join(f'`{o.name}`' for o in outputs)}. `onnx_signature.json` maps the "
            "model's own call onto them.\n\n```python\nimport onnxruntime as ort\n"
            "session = ort.InferenceSession('model.onnx')\n```\n\nor, called as the torch "
            f"model was:\n\n```python\n{load}\n```\n")


def export_run_onnx(source, out_dir, *, results_dir="results") -> list[Path]:
    """The trained model of ``source`` (a run id or folder) as ``model.onnx``, traced on a
    batch of its task's test split."""
    from attnarena.arena.run.artifacts import load_run_subject
    from attnarena.compress.ort import export_onnx

    subject = load_run_subject(source, results_dir=results_dir)
    run = subject.run
    batch = subject.batch(min(8, run["train"]["batch"]), 0, "cpu", "test")
    graph = export_onnx(subject.model, lambda model: subject.loss(model, batch),
                        name=f"a model of {run['mixer']}")
    out = _out(out_dir)
    graph.save(out)
    written = [out / "model.onnx", out / "onnx_signature.json"]
    readme = _readme(graph, f"{run['task']} / {run['mixer']} (seed {run['seed']}), ONNX",
                     "from attnarena.compress.ort import OrtModel\nmodel = OrtModel.load('.')")
    words, step_files = _step_graph(subject.model, f"a model of {run['mixer']}", out)
    (out / "config.json").write_text(json.dumps(run, indent=2))
    (out / "README.md").write_text(readme + words)
    return [*written, *step_files, out / "config.json", out / "README.md"]


def _step_graph(model, name: str, out: Path) -> tuple[str, list[Path]]:
    """A causal LM's decoding step (an arena ``CausalLM``'s or a pretrained decoder's) as
    ``step.onnx`` when it has one: (the README's words on it, the files written)."""
    from attnarena.compress.ort_decode import export_decoder
    from attnarena.models.lm import CausalLM
    from attnarena.pretrained import PretrainedDecoder

    if not isinstance(model, (CausalLM, PretrainedDecoder)):
        return "", []
    try:
        decoder = export_decoder(model, name=name)
    except ValueError as error:
        return f"\nNo decoding step graph: {error}.\n", []
    decoder.save(out)
    return _STEP_WORDS, [out / "step.onnx", out / "step.json"]


_STEP_WORDS = ("\n`step.onnx` decodes one token: inputs `token` (batch,) ids, `position` (1,) "
               "and `state_0`, ... (`step.json` gives their shapes; a KV cache's axis 2 grows "
               "a token a step), outputs `logits` and `next_state_0`, ...:\n\n```python\n"
               "from attnarena.compress.ort_decode import OrtDecoder\n"
               "decoder = OrtDecoder.load('.')\n"
               "# greedy, in ONNX Runtime alone; ids: (batch, length) token ids, unpadded\n"
               "tokens = decoder.generate(ids, max_new_tokens=20)\n```\n")


def export_pretrained_onnx(name, out_dir) -> list[Path]:
    """The pretrained model ``name`` (minilm, smollm2, or a directory) as ``model.onnx``
    with its tokenizer: an encoder's ids and attention mask in, token states and pooled
    output out; a causal LM's ids and mask in, logits out, and its decoding step as
    ``step.onnx``."""
    from attnarena.compress.ort import export_onnx
    from attnarena.pretrained import PretrainedDecoder, load_pretrained
    from attnarena.pretrained.corpus import corpus_split

    model = load_pretrained(name)
    if isinstance(model, PretrainedDecoder):
        return _export_decoder_onnx(model, name, _out(out_dir))
    ids, mask = model.tokenize(corpus_split("train")[:8])
    graph = export_onnx(model.model, lambda m: m(input_ids=ids, attention_mask=mask),
                        name=str(name))
    out = _out(out_dir)
    graph.save(out)
    model.tokenizer.save_pretrained(str(out))
    (out / "README.md").write_text(_readme(
        graph, f"{name}, ONNX",
        "from attnarena.compress.ort import OrtModel\nmodel = OrtModel.load('.')\n"
        "states = model(input_ids=ids, attention_mask=mask).last_hidden_state"))
    return [out / "model.onnx", out / "onnx_signature.json", out / "README.md"]


def _export_decoder_onnx(decoder, name, out: Path) -> list[Path]:
    """A pretrained causal LM: its forward (left-padded ids and mask -> logits) where its
    mechanisms export, and its decoding step; a ValueError when neither does."""
    from attnarena.compress.ort import export_onnx
    from attnarena.pretrained.corpus import corpus_split

    mechanisms = sorted({a.mechanism for a in decoder.attentions()})
    title = f"{name} ({', '.join(mechanisms)}), ONNX"
    decoder.tokenizer.padding_side = "left"
    batch = decoder.tokenizer(corpus_split("train")[:4], padding=True, truncation=True,
                              max_length=48, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    try:
        graph = export_onnx(decoder, lambda m: m(input_ids=ids, attention_mask=mask),
                            name=str(name))
    except ValueError as error:
        graph, refusal = None, f"No forward graph: {error}."
        readme = f"# {title}\n\n{refusal}\n"
    else:
        graph.save(out)
        readme = _readme(graph, title, "from attnarena.compress.ort import OrtModel\n"
                         "model = OrtModel.load('.')\n"
                         "logits = model(input_ids=ids, attention_mask=mask)")
    words, step_files = _step_graph(decoder, str(name), out)
    if graph is None and not step_files:
        raise ValueError(f"{refusal} {words.strip()}")
    decoder.tokenizer.save_pretrained(str(out))
    (out / "README.md").write_text(readme + words)
    forward = [] if graph is None else [out / "model.onnx", out / "onnx_signature.json"]
    return [*forward, *step_files, out / "README.md"]
