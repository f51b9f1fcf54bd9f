"""The ``attnarena`` command: parses arguments, calls the library, prints plain data."""
from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path

from attnarena.cli.parser import FORM_WORDS, PATTERN_LETTERS, build_parser
from attnarena.registry import list_mixers, mixer_info



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
            if i.padding_caveat:
                text += f"; padding changes its outputs: {i.padding_caveat}"
            text += ("; ONNX export: " + (f"no, {i.export_caveat}" if i.export_caveat
                                          else "yes"))
            if i.decodes:
                text += ("; ONNX decoding step: " + (f"no, {i.step_export_caveat}"
                                                     if i.step_export_caveat else "yes"))
            print(textwrap.fill(text, 100, subsequent_indent="  "))
        return 0
    # one line each, within 100 columns
    print(f"{'name':<15} {'family':<34} {'patterns':<9} {'forms':<14} {'kernel':<8} onnx "
          "decodes")
    for i in infos:
        patterns = " ".join(PATTERN_LETTERS[p] for p in PATTERN_LETTERS if p in i.patterns)
        forms = " ".join(FORM_WORDS[f] for f in FORM_WORDS if f in i.forms)
        kernel = "numba" if "numba" in mixer_kernel(i.name) else "PyTorch"
        print(f"{i.name:<15} {i.family:<34} {patterns:<9} {forms:<14} {kernel:<8} "
              f"{'no' if i.export_caveat else 'yes':<4} {'yes' if i.decodes else ''}")
    print(f"{len(infos)} mechanisms. patterns: s self, c causal, x cross, cx causal cross; "
          "forms: par parallel,\nchunk, rec recurrent. onnx: exports to ONNX Runtime. --long "
          "adds each one's paper,\ncomplexity and why one does not export; --form, "
          "--attention and --family filter.")
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
          f"{counts['speed_measured']} measured, {counts['speed_reused']} reused"
          + "".join(f"; {counts[k]} {k}" for k in ("compressed", "linearized") if counts.get(k)))
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
    from attnarena.arena.deploy.export import export_pretrained_onnx, export_run_onnx
    from attnarena.arena.run.artifacts import export_run

    if (args.run is None) == (args.model is None):
        raise ValueError("give a run id or folder, or --model NAME (not both)")
    if args.model is not None:
        if args.format != "onnx":
            raise ValueError("--model exports a pretrained model as ONNX: add --format onnx")
        paths = export_pretrained_onnx(args.model, args.out)
    elif args.format == "onnx":
        paths = export_run_onnx(args.run, args.out, results_dir=args.results)
    else:
        paths = export_run(args.run, args.out, results_dir=args.results)
    for path in paths:
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
        code = globals()[f"cmd_{args.command}"](args)  # each command is cmd_NAME here
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

