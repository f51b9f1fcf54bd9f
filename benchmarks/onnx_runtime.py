"""ONNX Runtime against torch on this CPU, side by side in one process.

``--minilm``: the pretrained all-MiniLM-L6-v2 (the pretrained and compress extras) at
lengths 64 and 128, batch 1 and 32: torch float32 eager, torch bfloat16 (where the CPU has
it), torch's deprecated ``torch.ao.quantization.quantize_dynamic`` (a reference, not
offered), and the ``ort``, ``ort_int8`` and ``ort_int8_static`` methods; quality is the
mean cosine with the original's embeddings on the held-out sentences. ``--linearized
DIR`` adds a linearized MiniLM, in torch and through ``ort_int8``.

``--decode``: tokens per second of one decoding step of an arena causal LM in ONNX
Runtime at contexts 512 and 4,096: softmax's KV-cache step graph against the fixed-size
state of linear-time mechanisms (``attnarena.compress.ort_decode``), each from the state
the torch prefill of a random context leaves.

``--smollm2``: the same for SmolLM2-135M (the pretrained extra): the original's KV-cache
step graph against linearized copies' (``--smollm2-mixers``, built from the original's
weights: speed does not depend on the trained values; or ``--linearized-decoder DIR``, a
model saved by ``attnarena linearize --model smollm2``), each in float32 and with its weight
products in int8 (``OrtDecoder.int8``), beside the torch model's own step, at contexts of
held-out text. The int8 step's agreement is the share of 32 greedy tokens after the
512-token prompt whose top-1 equals the float step's (fed the float step's tokens); it is
not given for a copy whose new parameters were never trained.

Every figure is a median over round-robin repeats with its interquartile range, threads
as given (default 1).

    python benchmarks/onnx_runtime.py --minilm --decode [--threads 1] [--repeats 15]
        [--linearized results/linearize/<id>/model]
    python benchmarks/onnx_runtime.py --smollm2 [--smollm2-mixers lolcats,gla]
"""
from __future__ import annotations

import argparse
import copy

import numpy as np
import torch


def round_robin(calls: dict, repeats: int) -> dict:
    """{name: (median, q1, q3) ms} of each call, timed in turn ``repeats`` times after one
    warm-up call (the arena's own timer)."""
    from attnarena.arena.measure.timer import time_calls

    timed = time_calls(calls, "cpu", repeats)
    return {name: (t["median_ms"], t["q1_ms"], t["q3_ms"]) for name, t in timed.items()}


def minilm(args):
    from attnarena.compress.quantize import bf16_unsupported
    from attnarena.compress.recipe import apply_recipe, make_step
    from attnarena.pretrained import EncoderSubject, load_pretrained
    from attnarena.pretrained.corpus import corpus_split

    encoder = load_pretrained("minilm").eval()
    subject = EncoderSubject.of(encoder, train=corpus_split("train"),
                                test=corpus_split("test"), length=128)
    data = subject.compress_data(4, 32, "cpu")
    models = {"torch float32": subject}
    methods = ["ort", "ort_int8", "ort_int8_static"]
    if bf16_unsupported("cpu") is None:
        methods.insert(0, "bf16")
    for name in methods:
        torch.manual_seed(0)
        models[name], _ = apply_recipe(copy.deepcopy(subject), [make_step(name)], data,
                                       log=lambda line: None)
    if args.linearized:  # a linearized MiniLM (attnarena linearize --model minilm)
        swapped = load_pretrained(args.linearized).eval()
        linear = EncoderSubject.of(swapped, train=corpus_split("train"),
                                   test=corpus_split("test"), length=128)
        models["linearized, torch float32"] = linear
        torch.manual_seed(0)
        models["linearized, ort_int8"], _ = apply_recipe(
            copy.deepcopy(linear), [make_step("ort_int8")],
            linear.compress_data(4, 32, "cpu"), log=lambda line: None)
    reference = copy.deepcopy(subject)
    reference.model = torch.ao.quantization.quantize_dynamic(
        reference.model, {torch.nn.Linear}, dtype=torch.qint8)
    reference.encoder = reference.encoder.with_model(reference.model)
    models["torch.ao quantize_dynamic (reference)"] = reference
    quality = {name: m.quality(subject)["mean_cosine"] for name, m in models.items()}
    cells = {}
    for length in (64, 128):
        for batch in (1, 32):
            ids = torch.randint(1, encoder.config.vocab_size, (batch, length),
                                generator=torch.Generator().manual_seed(length + batch))
            keep = torch.ones_like(ids)
            for name, m in models.items():
                cells[(name, length, batch)] = torch.no_grad()(
                    lambda m=m, ids=ids, keep=keep: m.encoder(ids, keep))
    timed = round_robin(cells, args.repeats)
    print(f"\n## MiniLM (all-MiniLM-L6-v2), {torch.get_num_threads()} thread(s), ms median "
          f"[q1, q3] of {args.repeats} round-robin repeats; speed-up over torch float32\n")
    header = " | ".join(f"L{length} b{batch}" for length in (64, 128) for batch in (1, 32))
    print(f"| model | mean cosine | {header} |")
    print("|---|---|" + "---|" * 4)
    for name in models:
        parts = []
        for length in (64, 128):
            for batch in (1, 32):
                median, q1, q3 = timed[(name, length, batch)]
                base = timed[("torch float32", length, batch)][0]
                parts.append(f"{median:.2f} [{q1:.2f}, {q3:.2f}] ({base / median:.2f}x)")
        print(f"| {name} | {quality[name]:.4f} | " + " | ".join(parts) + " |")


def torch_call(lm, prompt):
    """One torch decoding step after the prefill of ``prompt`` (a KV cache grows by a
    token a call: a few tokens over the repeats)."""
    from attnarena.compress.ort_decode import prefill, torch_step

    logits, states = prefill(lm, prompt)
    token, position = logits.argmax(-1), prompt.shape[1]
    return lambda: torch_step(lm, token, position, states)


def decode(args):
    from attnarena.compress.ort_decode import export_decoder, states_after
    from attnarena.models.lm import CausalLM

    contexts = (512, 4096)
    decoders = {}
    for mixer in args.mixers.split(","):
        torch.manual_seed(0)
        lm = CausalLM(args.vocab, dim=args.dim, depth=args.depth, heads=args.heads,
                      mixer=mixer, max_len=max(contexts) + 64).eval()
        decoders[mixer] = (lm, export_decoder(lm, name=mixer))
    calls = {}
    for context in contexts:
        prompt = torch.randint(0, args.vocab, (1, context),
                               generator=torch.Generator().manual_seed(context))
        for mixer, (lm, decoder) in decoders.items():
            logits, states = states_after(lm, prompt)
            token = logits.argmax(-1).numpy()
            calls[(mixer, context)] = (
                lambda d=decoder, t=token, c=context, s=states: d.step(t, c, s))
            calls[(f"{mixer} (torch step)", context)] = torch_call(lm, prompt)
    timed = round_robin(calls, args.repeats)
    print(f"\n## Decoding in ONNX Runtime: one step at a context, tokens/s (median [q1, q3] of "
          f"{args.repeats}), {torch.get_num_threads()} thread(s); CausalLM dim {args.dim}, "
          f"depth {args.depth}, {args.heads} heads, vocabulary {args.vocab}, batch 1\n")
    print("| mechanism | " + " | ".join(f"context {c:,}" for c in contexts) + " |")
    print("|---|" + "---|" * len(contexts))
    for mixer in [m for name in decoders for m in (name, f"{name} (torch step)")]:
        parts = []
        for context in contexts:
            median, q1, q3 = timed[(mixer, context)]
            parts.append(f"{1e3 / median:,.0f} [{1e3 / q3:,.0f}, {1e3 / q1:,.0f}]")
        print(f"| {mixer} | " + " | ".join(parts) + " |")


def smollm2(args):
    from attnarena.compress.ort_decode import export_decoder, states_after
    from attnarena.pretrained import load_pretrained
    from attnarena.pretrained.corpus import document_split
    from attnarena.pretrained.decoder_subject import token_stream
    from attnarena.pretrained.llama import swap_decoder_attention

    contexts = (512, 4096)
    original = load_pretrained("smollm2")
    models = {"softmax (original)": original}
    if args.linearized_decoder:
        linear = load_pretrained(args.linearized_decoder)
        models[", ".join(sorted({a.mechanism for a in linear.attentions()}))] = linear
    else:
        for mixer in args.smollm2_mixers.split(","):
            linear = copy.deepcopy(original)
            swap_decoder_attention(linear.model, mixer)
            models[mixer] = linear
    graphs = {}
    for name, model in models.items():
        graphs[name] = export_decoder(model, name=name)
        graphs[f"{name} int8"] = graphs[name].int8()
    stream = token_stream(original.tokenizer, document_split("test"))
    stream = stream.repeat(-(-max(contexts) // stream.numel()))
    calls, state_mib, agreement = {}, {}, {}
    trained = {"softmax (original)"} | ({*models} if args.linearized_decoder else set())
    for context in contexts:
        prompt = stream[:context][None]
        for name, model in models.items():
            logits, states = states_after(model, prompt)
            state_mib[(name, context)] = sum(s.nbytes for s in states) / 2**20
            token = logits.argmax(-1).numpy()
            for graph in (name, f"{name} int8"):
                calls[(graph, context)] = (
                    lambda d=graphs[graph], t=token, c=context, s=states: d.step(t, c, s))
            calls[(f"{name} (torch step)", context)] = pretrained_torch_step(model, prompt)
            if context == contexts[0] and name in trained:
                agreement[name] = int8_agreement(graphs[name], graphs[f"{name} int8"], token,
                                                 context, states)
    timed = round_robin(calls, args.repeats)
    print(f"\n## SmolLM2-135M decoding in ONNX Runtime: one step at a context of held-out "
          f"text, tokens/s (median [q1, q3] of {args.repeats}), {torch.get_num_threads()} "
          f"thread(s), batch 1\n")
    print("| model | step | " + " | ".join(f"context {c:,}" for c in contexts)
          + " | state at " + " / ".join(f"{c:,}" for c in contexts) + " | int8 top-1 "
          "agreement |")
    print("|---|---|" + "---|" * (len(contexts) + 2))
    for name in models:
        for graph, kind in ((name, "ONNX Runtime float32"), (f"{name} int8", "ONNX Runtime "
                            "int8"), (f"{name} (torch step)", "torch float32")):
            parts = []
            for context in contexts:
                median, q1, q3 = timed[(graph, context)]
                parts.append(f"{1e3 / median:,.1f} [{1e3 / q3:,.1f}, {1e3 / q1:,.1f}]")
            mib = " / ".join(f"{state_mib[(name, c)]:,.1f} MiB" for c in contexts)
            share = "" if not kind.endswith("int8") else \
                f"{agreement[name]:.3f}" if name in agreement else "- (copy not trained)"
            print(f"| {name} | {kind} | " + " | ".join(parts) + f" | {mib} | {share} |")


def pretrained_torch_step(model, prompt):
    """One torch step of a pretrained decoder after the prefill of ``prompt`` (each call
    from the same state: the context stays at the prompt's length)."""
    with torch.no_grad():
        hidden, state = model.run(prompt, want_state=True, reserve=1)
        token = model.model.lm_head(hidden[:, -1]).argmax(-1)

    def call():
        with torch.no_grad():
            return model.run(token[:, None], state=state)

    return call


def int8_agreement(graph, int8, token, context, states, tokens=32):
    """Share of ``tokens`` greedy steps where the int8 step's top-1 equals the float
    step's, both fed the float step's tokens from the same state."""
    same, a, b = 0, list(states), list(states)
    for i in range(tokens):
        logits, a = graph.step(token, context + i, a)
        quantized, b = int8.step(token, context + i, b)
        same += int(np.array_equal(logits.argmax(-1), quantized.argmax(-1)))
        token = logits.argmax(-1)
    return same / tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", action="store_true")
    parser.add_argument("--decode", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--mixers", default="softmax,gla,mamba2,linear")
    parser.add_argument("--linearized", default=None,
                        help="with --minilm: a linearized MiniLM's folder (attnarena "
                             "linearize --model minilm writes results/linearize/<id>/model)")
    parser.add_argument("--smollm2", action="store_true")
    parser.add_argument("--smollm2-mixers", default="lolcats,gla")
    parser.add_argument("--linearized-decoder", default=None,
                        help="with --smollm2: a linearized SmolLM2's folder (attnarena "
                             "linearize --model smollm2)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.minilm or args.decode or args.smollm2):
        parser.error("choose --minilm, --decode, --smollm2 or several")
    if args.minilm:
        minilm(args)
    if args.decode:
        decode(args)
    if args.smollm2:
        smollm2(args)


if __name__ == "__main__":
    main()
