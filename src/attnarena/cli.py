"""The ``attnarena`` command: parses arguments, calls the library, prints plain data."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path

from attnarena import __version__
from attnarena.registry import list_mixers, mixer_info


STORE_HELP = ("the results store: an SQLite file (default results/arena.sqlite) or a "
              "PostgreSQL database, postgresql://user:password@host:port/db")
DEVICE_HELP = "cpu, cuda, cuda:N, or auto (CUDA when present, else cpu; the default)"


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _keep_softmax(text: str):
    """Layer indices ("0,5") or "auto:K" (K layers chosen after stage 1)."""
    if text.startswith("auto:"):
        count = text[5:]
        if not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"expected auto:K with K a positive number of "
                                             f"layers, got {text!r}")
        return int(count)
    return _indices(text)


def _indices(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got {text!r}")
    if min(values, default=0) < 0:
        raise argparse.ArgumentTypeError(f"expected layer indices >= 0, got {text!r}")
    return values


PATTERN_LETTERS = {"self": "s", "causal": "c", "cross": "x", "causal_cross": "cx"}
FORM_WORDS = {"parallel": "par", "chunk": "chunk", "recurrent": "rec"}


def cmd_list(args) -> int:
    from attnarena.registry import mixer_kernel

    infos = [mixer_info(n) for n in list_mixers(args.pattern)]
    infos = [i for i in infos
             if (args.form is None or args.form in i.forms)
             and (args.attention is None or args.attention in i.patterns)
             and (args.family is None or args.family.lower() in i.family.lower())]
    if not infos:
        given = [repr(args.pattern)] if args.pattern else []
        given += [f"--{k} {v}" for k, v in (("form", args.form), ("attention", args.attention),
                                            ("family", args.family)) if v]
        raise ValueError(f"no mechanism matches {' and '.join(given)}; `attnarena list` shows "
                         f"all {len(list_mixers())}")
    if args.markdown:
        from attnarena.registry import mechanism_table

        print(mechanism_table([i.name for i in infos]))
        return 0
    if args.long:
        import textwrap

        for i in infos:
            text = (f"{i.name}: {i.family}; {i.paper}. Complexity {i.complexity}; patterns "
                    f"{', '.join(sorted(i.patterns))}; forms {', '.join(sorted(i.forms))}; "
                    f"kernel {mixer_kernel(i.name)}")
            print(textwrap.fill(text, 100, subsequent_indent="  "))
        return 0
    # one line each, within 100 columns
    print(f"{'name':<15} {'family':<34} {'patterns':<9} {'forms':<14} {'kernel':<8} decodes")
    for i in infos:
        patterns = " ".join(PATTERN_LETTERS[p] for p in PATTERN_LETTERS if p in i.patterns)
        forms = " ".join(FORM_WORDS[f] for f in FORM_WORDS if f in i.forms)
        kernel = "numba" if "numba" in mixer_kernel(i.name) else "PyTorch"
        print(f"{i.name:<15} {i.family:<34} {patterns:<9} {forms:<14} {kernel:<8} "
              f"{'yes' if i.decodes else ''}")
    print(f"{len(infos)} mechanisms. patterns: s self, c causal, x cross, cx causal cross; "
          "forms: par parallel,\nchunk, rec recurrent. --long adds each one's paper and "
          "complexity; --form, --attention\nand --family filter.")
    return 0


def cmd_tasks(args) -> int:
    from attnarena.tasks import list_tasks, task_options, task_presets
    from attnarena.tasks.registry import task_class

    if args.name is None:
        print(f"{'task':<16} {'metric':<9} {'presets':<11} data")
        for name in list_tasks():
            cls = task_class(name)
            data = "needs --data" if cls.needs_data else (
                "reads --data, else generates" if cls.reads_data else "generated")
            print(f"{name:<16} {cls.metric:<9} {','.join(sorted(task_presets(name))):<11} "
                  f"{data}")
        print("`attnarena tasks NAME` lists a task's options and presets.")
        return 0
    cls = task_class(args.name)
    summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    print(f"{args.name}: {summary}")
    print("options (--task-option key=value; default, then each preset's value):")
    presets = task_presets(args.name)
    for key, default in task_options(args.name).items():
        by_preset = ", ".join(f"{p} {presets[p]['task'][key]!r}" for p in sorted(presets)
                              if key in presets[p]["task"])
        print(f"  {key} = {default!r}" + (f"   ({by_preset})" if by_preset else ""))
    for preset in sorted(presets):
        settings = {**presets[preset]["model"], **presets[preset]["train"]}
        print(f"preset {preset}: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    return 0


def cmd_speed(args) -> int:
    from attnarena.arena.measure.speed import SpeedConfig, run_speed
    from attnarena.options import parse_mixers
    from attnarena.arena.report.speed import crossovers, write_speed

    _names(args.mixers)  # given but empty: an error, not every mechanism
    cfg = SpeedConfig(mixers=parse_mixers(args.mixers or list_mixers()), lengths=args.lengths,
                      pass_=args.pass_, batch=args.batch, heads=args.heads,
                      head_dim=args.head_dim, dtype=args.dtype, device=args.device,
                      causal=not args.noncausal, repeats=args.repeats,
                      time_budget=args.time_budget)
    result = run_speed(cfg, progress=not args.quiet)
    paths = write_speed(result, args.out, stem=f"speed-{args.pass_}")
    meta = result["meta"]
    print(f"matmul throughput ({args.dtype}): {meta['matmul_gflops']:.1f} GFLOP/s before the "
          f"sweep, {meta['matmul_gflops_after']:.1f} after")
    print(f"{'mixer':<28} {'length':>7} {'status':<10} {'median ms':>10} {'± IQR/2':>8} "
          f"{'tokens/s':>12} {'peak MiB':>9} {'error':>9}  flags")
    errors = []
    for r in result["rows"]:
        def fmt(key, spec):
            width = int(spec.split(".")[0])
            return format(r[key], spec) if r.get(key) is not None else "-".rjust(width)
        status = r["status"]
        if status.startswith("error"):
            errors.append(f"{r['mixer']} at L={r['length']}: {status[len('error: '):]}")
            status = f"error ({len(errors)})"
        half = None if r.get("q1_ms") is None else (r["q3_ms"] - r["q1_ms"]) / 2
        print(f"{r['mixer']:<28} {r['length']:>7} {status:<10} "
              f"{fmt('median_ms', '10.3f')} {'-' if half is None else format(half, '.3f'):>8} "
              f"{fmt('tokens_per_s', '12.0f')} "
              f"{fmt('peak_mem_mb', '9.1f')} {fmt('rel_error', '9.2g')}  "
              f"{', '.join(r.get('flags') or [])}")
    for number, text in enumerate(errors, start=1):
        print(f"error ({number}): {text}")
    cross = crossovers(result["rows"])
    if cross:
        print("crossover (shortest length from which faster than softmax, interquartile "
              "ranges apart, with less memory): "
              + ", ".join(f"{m} {'never' if n is None else n}" for m, n in cross.items()))
    if any(r.get("rel_error") is not None for r in result["rows"]):
        print("error: ||y - y*|| / ||y*|| against exact softmax attention through the "
              "mixer's own projections, at initialization")
    if any(r.get("flags") for r in result["rows"]):
        print("flags: busy = other processes used over a quarter of the cores while it was "
              "timed; noisy = interquartile range over a quarter of the median")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if all(r["status"] != "ok" for r in result["rows"]):
        print("attnarena speed: error: no case ran; see the reasons above", file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    from attnarena.arena.run.runner import run_suite
    from attnarena.arena.store import store_label
    from attnarena.options import parse_options

    counts = run_suite(args.suite, store_path=args.store, out_dir=args.out,
                       mixers=_names(args.mixers), tasks=_names(args.tasks, "--tasks"),
                       device=args.device,
                       rerun=args.rerun, progress=not args.quiet, data_root=args.data,
                       jobs=args.jobs, max_runs=args.max_runs, launcher=args.launcher,
                       workers=args.workers, cluster=args.cluster,
                       launcher_options=parse_options(args.launcher_option,
                                                      where=" in --launcher-option"),
                       train_only=args.train_only)
    others = f", {counts['by_others']} by other processes" if counts["by_others"] else ""
    print(f"runs: {counts['trained']} trained, {counts['reused']} already in the store"
          f"{others}, {counts['failed']} failed, {counts['diverged']} diverged; speed cases: "
          f"{counts['speed_measured']} measured, {counts['speed_reused']} reused")
    board = Path(args.out) / "leaderboard.md"
    if board.exists() and not args.train_only:
        print(board.read_text())
    print("store: " + store_label(args.store))
    if counts.get("reports"):
        print("wrote " + ", ".join(counts["reports"]))
    return 1 if counts["failed"] else 0


def train_config(args):
    """The ``RunConfig`` that ``attnarena train``'s arguments describe."""
    from attnarena.arena.run.config import RunConfig
    from attnarena.options import parse_options

    train_overrides = {k: v for k, v in (("steps", args.steps), ("batch", args.batch),
                                         ("lr", args.lr)) if v is not None}
    task_options = parse_options(args.task_option)
    if args.data:
        task_options["data_dir"] = str(Path(args.data).resolve())
    return RunConfig(task=args.task, mixer=args.mixer, preset=args.preset, seed=args.seed,
                     mixer_options=parse_options(args.option), task_options=task_options,
                     model=parse_options(args.model, where=" in --model"),
                     train=train_overrides, device=args.device)


def cmd_train(args) -> int:
    import json

    from attnarena.arena.run.runner import train_run

    if args.json and Path(args.json).is_dir():
        raise ValueError(f"--json names a file to write, but {args.json} is a directory")
    if args.json and not Path(args.json).parent.is_dir():
        raise ValueError(f"--json {args.json}: the folder {Path(args.json).parent} does not "
                         "exist")
    config = train_config(args)
    store_path = None if args.no_store else (args.store or Path(args.out) / "arena.sqlite")
    run, metrics = train_run(config, out=args.out, store_path=store_path,
                             progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    summary = {k: v for k, v in metrics.items() if k != "history"}
    summary["task"], summary["preset"] = args.task, args.preset
    if args.json:
        Path(args.json).write_text(json.dumps({"config": run.as_dict(), "metrics": metrics},
                                              indent=2))
    print(json.dumps({"id": run.id, **summary}, indent=2))
    return 0


def cmd_export(args) -> int:
    from attnarena.arena.run.artifacts import export_run

    for path in export_run(args.run, args.out, results_dir=args.results):
        print(f"wrote {path}")
    return 0


def cmd_data(args) -> int:
    from attnarena.options import parse_options
    from attnarena.tasks.data import write_task_data

    paths = write_task_data(args.task, args.out, preset=args.preset,
                            options=parse_options(args.option), synthetic=args.synthetic,
                            examples=args.examples)
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_report(args) -> int:
    from attnarena.arena.report.publish import build_reports
    from attnarena.arena.report.leaderboard import format_rows, leaderboard_rows
    from attnarena.arena.store import Store

    store = Store(args.store, readonly=True)  # a report never changes the store
    if args.format in ("csv", "json"):
        text = format_rows(leaderboard_rows(store), args.format)
        if args.output:
            Path(args.output).write_text(text)
            print(f"wrote {args.output}")
        else:
            print(text, end="")
        return 0
    paths = build_reports(store, args.out)
    text = paths[0].read_text()
    if args.output:
        Path(args.output).write_text(text)
        paths.insert(1, Path(args.output))
    else:
        print(text)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def cmd_serve(args) -> int:
    from attnarena.arena.report.serve import make_server
    from attnarena.arena.store import store_label
    from attnarena.extras import require

    require("plotly", "the web page (attnarena serve)", "web")
    if args.refresh <= 0:
        raise ValueError(f"--refresh must be a positive number of seconds, got {args.refresh}")
    server = make_server(args.store, args.out, args.host, args.port, args.refresh)
    host, port = server.server_address[:2]
    print(f"serving the leaderboard of {store_label(args.store)} at http://{host}:{port}/ "
          f"(read-only; the page refreshes every {args.refresh:g} s); open that address in "
          "a browser; Ctrl-C stops", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: bound to {host}, so other machines can read it too", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_choose(args) -> int:
    from attnarena.arena.report.choose import Question, choice_markdown, choose
    from attnarena.arena.store import Store

    question = Question(length=args.length, batch=args.batch, memory=args.memory,
                        decode=args.decode, causal=args.causal, task=args.task,
                        mixers=tuple(_names(args.mixers) or ()))
    if args.task is not None:
        from attnarena.tasks.registry import task_class

        task_class(args.task)  # an unknown name: one line with the valid ones
    store = Store(args.store) if args.measure else Store(args.store, readonly=True)
    log = (lambda line: None) if args.quiet else print
    result = choose(store, question, measure=args.measure, progress=not args.quiet, log=log)
    print(choice_markdown(result))
    return 0


def cmd_store(args) -> int:
    from attnarena.arena.store import SCHEMA_VERSION, Store, store_label
    from attnarena.arena.store.copy import copy_rows
    from attnarena.arena.store.postgres import is_postgres_url

    if args.action == "copy":
        if len(args.locations) != 2:
            raise ValueError("store copy takes two stores, SRC and DST (an SQLite file or a "
                             f"postgresql:// URL each); got {len(args.locations)}")
        source, target = args.locations
        if store_label(source) == store_label(target):
            raise ValueError(f"store copy: SRC and DST are the same store ({store_label(source)})")
        src, dst = Store(source, readonly=True), Store(target)
        try:
            counts = copy_rows(src, dst)
        finally:
            src.close()
            dst.close()
        for table, c in counts.items():
            print(f"{table}: {c['added']} added, {c['replaced']} replaced, {c['kept']} kept")
        print(f"copied {store_label(source)} -> {store_label(target)}")
        return 0
    if args.locations:
        raise ValueError("store migrate takes the store by --store, not as an argument")
    if not is_postgres_url(args.store) and not Path(args.store).exists():
        raise ValueError(f"no results store at {args.store}")
    Store(args.store).close()  # a writing open migrates, after backing the file up
    print(f"{store_label(args.store)}: schema {SCHEMA_VERSION}, up to date")
    return 0


def cmd_linearize(args) -> int:
    from attnarena.arena.deploy.linearize import (linearize_pretrained, linearize_run,
                                                  remeasure_speed)
    from attnarena.linearize import LinearizeConfig
    from attnarena.options import parse_options

    log = (lambda message: None) if args.quiet else print
    if args.remeasure_speed:
        if args.model is None:
            raise ValueError("--remeasure-speed times the stored rows of a --model")
        rows = remeasure_speed(args.model, store_path=args.store, lengths=args.lengths,
                               device=args.device, log=log)
        return _linearize_report(rows, args)
    if args.mixer is None:
        raise ValueError("--mixer is required: the mechanism that replaces softmax")
    steps = {"transfer_steps": args.transfer_steps if args.transfer_steps is not None
             else args.steps,
             "finetune_steps": args.finetune_steps if args.finetune_steps is not None
             else args.steps}
    decoder = args.model is not None and _is_decoder(args.model)
    keep = args.keep_softmax
    chosen = {"batch_size": args.batch, "max_length": args.max_length,
              "transfer_lr": args.transfer_lr, "finetune_lr": args.finetune_lr}
    if decoder:  # windows of 512 tokens, a few per step, as LoLCATs trains
        chosen = {"batch_size": 4, "max_length": 512, "transfer_lr": 1e-2,
                  "finetune_lr": 1e-3} | {k: v for k, v in chosen.items() if v is not None}
    config = LinearizeConfig(
        mixer=args.mixer, options=parse_options(args.option or []),
        keep_softmax=tuple(keep) if isinstance(keep, list) else (),
        keep_softmax_auto=keep if isinstance(keep, int) else 0, loss=args.loss,
        lora_rank=args.lora_rank, seed=args.seed,
        **{k: v for k, v in {**steps, **chosen}.items() if v is not None})
    if args.model is not None:
        rows = linearize_pretrained(args.model, config, store_path=args.store,
                                    results_dir=args.out,
                                    lengths=args.lengths or ([512, 2048] if decoder
                                                             else [128, 512]),
                                    batch=1 if decoder else 8, device=args.device,
                                    eval_sentences=args.eval_sentences,
                                    contexts=tuple(args.contexts or (512, 2048)),
                                    eval_tokens=args.eval_tokens, rerun=args.rerun, log=log)
    else:
        rows = linearize_run(args.run, config, store_path=args.store, results_dir=args.out,
                             device=args.device, rerun=args.rerun, log=log)
    return _linearize_report(rows, args)


def _is_decoder(model) -> bool:
    from attnarena.pretrained.decoder import is_decoder_directory

    return model == "smollm2" or is_decoder_directory(Path(model))


def cmd_generate(args) -> int:
    from attnarena.arena.measure.environment import resolve_device
    from attnarena.pretrained import PretrainedDecoder, load_pretrained

    model = load_pretrained(args.model, device=resolve_device(args.device))
    if not isinstance(model, PretrainedDecoder):
        raise ValueError(f"{args.model} is not a causal language model (generate needs one, "
                         "e.g. smollm2 or a linearized decoder's folder)")
    tokenizer = model.tokenizer
    written, shown = [], [""]

    def stream(step, token):
        written.append(int(token[0]))
        text = tokenizer.decode(written, skip_special_tokens=True)
        print(text[len(shown[0]):], end="", flush=True)
        shown[0] = text

    print(args.prompt, end="", flush=True)
    result = model.generate(args.prompt, args.max_new_tokens, temperature=args.temperature,
                            top_k=args.top_k, seed=args.seed, stream=stream)
    prompt_tokens = len(tokenizer(args.prompt)["input_ids"])
    grows = any(a.core.grows for a in model.attentions())
    rate = result["tokens_per_second"]
    print(f"\n\n{len(written)} tokens; prefill of {prompt_tokens} prompt tokens "
          f"{result['prefill_seconds']:.2f} s; decoding "
          + (f"{rate:.1f} tokens/s" if rate else "one token")
          + f"; decoding state {result['state_bytes'] / 2**20:.2f} MiB "
          + ("(a key/value cache: grows with the context)" if grows
             else "(fixed: does not grow with the context)"))
    return 0


def _compress_recipes(args) -> list:
    from attnarena.compress.recipe import recipe_from_methods, recipes_from_file

    return [recipe_from_methods(args.method)] if args.method else recipes_from_file(args.recipes)


def cmd_compress(args) -> int:
    from attnarena.arena.deploy.compress import compress_run
    from attnarena.arena.report.compression import compress_markdown
    from attnarena.arena.report.publish import build_reports
    from attnarena.arena.store import Store

    if (args.source is None) == (args.model is None):
        raise ValueError("name what to compress: a run id or run folder, or --model "
                         "NAME_OR_DIR (a pretrained encoder, e.g. minilm), not both")
    recipes = _compress_recipes(args)
    log = (lambda message: None) if args.quiet else print
    if args.model is not None:
        from attnarena.arena.deploy.compress import compress_pretrained

        rows = compress_pretrained(args.model, recipes, store_path=args.store,
                                   results_dir=args.out, device=args.device,
                                   calibration=args.calibration, batch=args.batch,
                                   eval_sentences=args.eval_sentences, length=args.length,
                                   repeats=args.repeats, rerun=args.rerun, log=log)
    else:
        rows = compress_run(args.source, recipes, store_path=args.store,
                            results_dir=args.out, device=args.device,
                            calibration=args.calibration, batch=args.batch,
                            repeats=args.repeats, rerun=args.rerun, log=log)
    print(compress_markdown(rows))
    paths = build_reports(Store(args.store), args.out)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _linearize_report(rows, args) -> int:
    from attnarena.arena.report.publish import build_reports
    from attnarena.arena.report.linearization import linearize_markdown
    from attnarena.arena.store import Store

    print(linearize_markdown(rows))
    paths = build_reports(Store(args.store), args.out)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _names(text, option="--mixers"):
    """Comma-separated names; None when the option was not given. An option given with no
    names (an empty shell variable) is an error, not "everything"."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"{option} was given no names (got {text!r}); leave it out to "
                         "take every one")
    return names


def build_parser() -> argparse.ArgumentParser:
    from attnarena.compress import list_methods

    parser = argparse.ArgumentParser(prog="attnarena",
                                     description="The efficient-Transformer arena.")
    parser.add_argument("--version", action="version", version=f"attnarena {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, print the full traceback (also ATTNARENA_TRACEBACK=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    # --traceback also after the command's name
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)

    def command(name, **kw):
        return sub.add_parser(name, parents=[common], **kw)


    p = command("list", help="mechanisms and what each supports")
    p.add_argument("pattern", nargs="?", default=None, help="glob on names, e.g. '*linear*'")
    p.add_argument("--form", choices=sorted(FORM_WORDS), default=None,
                   help="only mechanisms with this form")
    p.add_argument("--attention", choices=sorted(PATTERN_LETTERS), default=None,
                   help="only mechanisms that support this pattern")
    p.add_argument("--family", default=None, help="only families whose name contains this")
    p.add_argument("--long", action="store_true",
                   help="each mechanism's paper, complexity, patterns, forms and kernel")
    p.add_argument("--markdown", action="store_true",
                   help="print the README's mechanism table (markdown)")
    p.set_defaults(func=cmd_list)

    p = command("tasks", help="tasks, or one task's options and presets")
    p.add_argument("name", nargs="?", default=None)
    p.set_defaults(func=cmd_tasks)

    p = command("speed", help="time and peak memory against sequence length")
    p.add_argument("--mixers", default=None,
                   help="comma-separated names, options as name:key=value (default: all)")
    p.add_argument("--lengths", type=_ints, default=[1024, 4096, 16384])
    p.add_argument("--pass", dest="pass_", choices=["fwd", "fwdbwd", "decode"], default="fwd")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="float32",
                   choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--noncausal", action="store_true", help="noncausal self attention")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--time-budget", type=float, default=60.0,
                   help="seconds for one call before the case counts as a timeout")
    p.add_argument("--out", default="results/speed",
                   help="folder for the CSV, JSON and PNG (apart from the report's files)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_speed)

    p = command("run", help="the main job: a suite of runs -> store -> report")
    p.add_argument("--suite", default="quick", help="built-in suite name or a .toml file")
    p.add_argument("--mixers", default=None,
                   help="only these mixers or stacks (comma-separated; a stack's layers "
                        "joined with +, e.g. gla,3*gla+softmax)")
    p.add_argument("--tasks", default=None, help="only these tasks (comma-separated)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    p.add_argument("--out", default="results",
                   help="reports, checkpoints and trained models (OUT/runs) go here")
    p.add_argument("--rerun", action="store_true", help="repeat runs already in the store")
    p.add_argument("--data", default=None,
                   help="data root with a folder per task that reads data (ROOT/text, "
                        "ROOT/retrieval, ROOT/image, ROOT/listops, ROOT/pathfinder)")
    p.add_argument("--jobs", type=_positive, default=1,
                   help="train this many runs at once, each process on an equal share of "
                        "the threads (small models train faster on one core each than on "
                        "several together); the speed sweep runs after them, alone")
    p.add_argument("--max-runs", type=_positive, default=5000,
                   help="refuse a suite naming more runs than this (default 5000)")
    p.add_argument("--launcher", choices=["local", "submitit"], default="local",
                   help="local: train here (with --jobs processes); submitit: submit "
                        "--workers jobs (a Slurm job array, or local processes) that train "
                        "the runs through the store, wait for them, then report")
    p.add_argument("--workers", type=_positive, default=1,
                   help="--launcher submitit: how many jobs")
    p.add_argument("--cluster", choices=["auto", "local", "slurm"], default="auto",
                   help="--launcher submitit: where the jobs run (auto: Slurm when sbatch "
                        "is here, else local processes)")
    p.add_argument("--launcher-option", action="append", metavar="KEY=VALUE",
                   help="--launcher submitit: an executor parameter (repeatable), e.g. "
                        "slurm_partition=gpu, timeout_min=120, gpus_per_node=1")
    p.add_argument("--train-only", action="store_true",
                   help="stop once every run is trained (no speed sweep, compression or "
                        "reports): each task of a cluster job array")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)

    p = command("train", help="one training run")
    p.add_argument("--task", required=True)
    p.add_argument("--mixer", required=True,
                   help="a mechanism, or a stack of them across layers: '3*gla+softmax', "
                        "'gla,gla,local(window=64)' (repeated to the depth)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="global batch")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--option", action="append", help="mixer option key=value (repeatable)")
    p.add_argument("--model", action="append",
                   help="model setting key=value (repeatable), e.g. depth=4 or dim=128")
    p.add_argument("--task-option", action="append",
                   help="task option key=value (repeatable), e.g. max_length=4096")
    p.add_argument("--data", default=None,
                   help="the task's data directory (text, retrieval and image need one; "
                        "listops and pathfinder read one instead of generating)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--store", default=None,
                       help="record the run in this store (default OUT/arena.sqlite, the "
                            "store `attnarena run` and `report` use), so it shows in the "
                            "report and `compress RUN_ID` finds it")
    where.add_argument("--no-store", action="store_true", help="record the run in no store")
    p.add_argument("--out", default="results",
                   help="checkpoints and the trained model (OUT/runs/RUN_ID) go here")
    p.add_argument("--json", default=None, help="write config and metrics to this file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = command("data", help="write a task's data to disk in its on-disk format")
    p.add_argument("task")
    p.add_argument("--out", required=True, help="directory to write into")
    p.add_argument("--preset", default=None,
                   help="whose task settings (sizes, lengths) to use: cpu (the default, "
                        "as for train) or paper (LRA's published sizes)")
    p.add_argument("--option", action="append",
                   help="task option key=value (repeatable), e.g. train_examples=1000")
    p.add_argument("--synthetic", action="store_true",
                   help="text, retrieval, image: write a small made-up stand-in in the real "
                        "layout")
    p.add_argument("--examples", type=int, default=1000,
                   help="examples per split for tasks drawn fresh each batch")
    p.set_defaults(func=cmd_data)

    p = command("export", help="a trained run's weights and config, to use elsewhere")
    p.add_argument("run", help="a run id (see the leaderboard) or a run folder")
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--results", default="results", help="where the run's results are")
    p.set_defaults(func=cmd_export)

    p = command("linearize", help="linearize a pretrained encoder or a trained softmax run "
                                  "by attention transfer, then fine-tuning")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", default=None,
                      help="a pretrained model: minilm (all-MiniLM-L6-v2), smollm2 "
                           "(SmolLM2-135M, a causal LM; offline with the pretrained extra) "
                           "or a model directory")
    what.add_argument("--run", default=None, help="a finished softmax run of the store (its id)")
    p.add_argument("--mixer", default=None, help="the mechanism that replaces softmax")
    p.add_argument("--option", action="append", help="mixer option key=value (repeatable)")
    p.add_argument("--keep-softmax", type=_keep_softmax, default=None,
                   help="layers that stay softmax attention, e.g. 0,5; or auto:K, the K "
                        "layers with the largest attention-transfer loss after stage 1")
    p.add_argument("--steps", type=int, default=None,
                   help="steps of each stage (default 300 each)")
    p.add_argument("--transfer-steps", type=int, default=None, help="steps of stage 1 only")
    p.add_argument("--finetune-steps", type=int, default=None, help="steps of stage 2 only")
    p.add_argument("--loss", choices=["mse", "attention"], default="mse",
                   help="stage 1: match attention outputs (mse, LoLCATs) or attention "
                        "weights (Hedgehog's cross-entropy)")
    p.add_argument("--lora-rank", type=int, default=8, help="rank of the stage-2 adapters")
    p.add_argument("--batch", type=int, default=None,
                   help="sentences (an encoder; default 32) or token windows (a decoder; "
                        "default 4) per step with --model (a --run trains on its own batch)")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per training sequence with --model (default 128 for an "
                        "encoder, 512 for a decoder)")
    p.add_argument("--transfer-lr", type=float, default=None, help="stage 1 learning rate")
    p.add_argument("--finetune-lr", type=float, default=None, help="stage 2 learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lengths", type=_ints, default=None,
                   help="lengths to time (default 128,512 for an encoder, 512,2048 for a "
                        "decoder's prefill)")
    p.add_argument("--contexts", type=_ints, default=None,
                   help="a decoder's perplexity contexts (default 512,2048)")
    p.add_argument("--eval-tokens", type=int, default=4096,
                   help="a decoder's held-out tokens measured (default 4096)")
    p.add_argument("--eval-sentences", type=int, default=None,
                   help="measure agreement on only the first N held-out sentences")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    p.add_argument("--out", default="results")
    p.add_argument("--rerun", action="store_true", help="measure again rows already stored")
    p.add_argument("--remeasure-speed", action="store_true",
                   help="time again every stored row of --model on this machine (the "
                        "original and each architecture back to back), keeping the rest")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_linearize)

    p = command("generate", help="continue a prompt with a causal LM (smollm2, or a "
                                 "linearized decoder's folder), streaming tokens")
    p.add_argument("--model", default="smollm2", help="smollm2 or a model directory")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (the default) is greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_generate)

    p = command("compress", help="compress a trained run by recipes (quantization, pruning, "
                                 "low-rank, distillation), measured before and after",
                epilog="methods: " + ", ".join(list_methods()) + ". Example: attnarena "
                       "compress RUN_ID --method 'prune_heads fraction=0.5' --method "
                       "'distill steps=200' --method int8_dynamic")
    p.add_argument("source", nargs="?", default=None,
                   help="a finished run's id (see the leaderboard) or a run folder")
    p.add_argument("--model", default=None,
                   help="or a pretrained encoder: minilm (offline with the pretrained extra) "
                        "or a model directory; quality = agreement with the original")
    p.add_argument("--eval-sentences", type=int, default=None,
                   help="with --model: measure agreement on the first N held-out sentences")
    p.add_argument("--length", type=int, default=128,
                   help="with --model: the encoder length timed (and 4x it, within its "
                        "positions)")
    recipe = p.add_mutually_exclusive_group(required=True)
    recipe.add_argument("--method", action="append",
                        help="one step, 'NAME key=value ...' (repeatable: the steps of one "
                             "recipe, in order)")
    recipe.add_argument("--recipes", default=None,
                        help="a TOML file of several recipes: [[recipe]] tables, each with "
                             "steps = [{method = 'NAME', key = value}, ...]")
    p.add_argument("--calibration", type=int, default=4,
                   help="calibration batches (training split) for data-driven methods")
    p.add_argument("--batch", type=int, default=None,
                   help="calibration and distillation batch (default: the run's own)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per latency")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    p.add_argument("--out", default="results",
                   help="where runs were trained; compressed models go to OUT/compressed")
    p.add_argument("--rerun", action="store_true", help="compress again recipes already stored")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_compress)

    p = command("serve", help="the leaderboard page from the store, live while a suite runs")
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    p.add_argument("--out", default="results",
                   help="where the suite's checkpoints are (curves of runs in progress)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="default 8765; 0 takes a free one")
    p.add_argument("--refresh", type=float, default=3.0,
                   help="seconds between the page's refreshes (default 3)")
    p.set_defaults(func=cmd_serve)

    p = command("report", help="leaderboard, plots and leaderboard.html from the store")
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    p.add_argument("--out", default="results")
    p.add_argument("--format", choices=["md", "csv", "json"], default="md")
    p.add_argument("--output", default=None,
                   help="write the leaderboard (Markdown, or the rows with --format csv or "
                        "json) to this file, not stdout")
    p.set_defaults(func=cmd_report)

    p = command("choose", help="which mechanism for my length and budget: quality from the "
                               "store joined with time and memory at that length")
    p.add_argument("--length", type=_positive, required=True, help="the sequence length")
    p.add_argument("--batch", type=_positive, default=1)
    p.add_argument("--memory", type=float, default=None,
                   help="a memory budget in MiB (peak of a forward pass, or the decoding "
                        "state with --decode)")
    p.add_argument("--decode", action="store_true",
                   help="judge by a decoding step and the state it keeps (causal)")
    p.add_argument("--causal", action="store_true", help="causal attention only")
    p.add_argument("--task", default=None,
                   help="take quality from this task only (default: every accuracy task)")
    p.add_argument("--mixers", default=None,
                   help="compare only these (default: every mechanism with a finished run)")
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    p.add_argument("--no-measure", dest="measure", action="store_false",
                   help="use stored timings only; never measure")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_choose)

    p = command("store", help="maintain a results store; copy rows between stores")
    p.add_argument("action", choices=["migrate", "copy"],
                   help="migrate: bring a store written by an older attnarena up to date "
                        "(every row and column kept; the file is backed up first); "
                        "copy SRC DST: every row of SRC into DST, idempotent (a row DST has "
                        "is replaced only by one further along or newer)")
    p.add_argument("locations", nargs="*", metavar="STORE",
                   help="copy: SRC and DST, each an SQLite file or a postgresql:// URL")
    p.add_argument("--store", default="results/arena.sqlite", help=STORE_HELP)
    p.set_defaults(func=cmd_store)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    show_trace = args.traceback or os.environ.get("ATTNARENA_TRACEBACK") == "1"
    # A cluster scheduler's SIGTERM stops a run like Ctrl-C: marked interrupted, resumable.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    if sys.stdout is None:  # started with stdout closed (>&-): nothing could be shown
        print(f"attnarena {args.command}: error: standard output is closed", file=sys.stderr)
        return 2
    try:
        code = args.func(args)
        sys.stdout.flush()  # a write error surfaces here, not silently at exit
        return code
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as cat does
        sys.stdout = open(os.devnull, "w")
        return 141
    except KeyboardInterrupt:
        print(f"attnarena {args.command}: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130
    except Exception as error:  # every failure is one line; --traceback shows the whole
        if show_trace:
            traceback.print_exc()
        # User errors are ValueError: bad input, a missing extra, a run that failed. Any
        # other exception is a bug, and says its type and where to see more.
        plain = isinstance(error, ValueError)
        # one line: a message spread over several (torch's) is joined, a huge one cut
        detail = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        detail = detail or "no detail"
        if len(detail) > 600:
            detail = detail[:600] + " ..."
        text = detail if plain else f"{type(error).__name__}: {detail}"
        hint = "" if show_trace or plain else " (--traceback shows where)"
        print(f"attnarena {args.command}: error: {text}{hint}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
