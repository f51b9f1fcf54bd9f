"""The leaderboard as a web page: ``leaderboard.html``, one self-contained file (the data,
Plotly's bundle, the page's script and styles all inline: it opens offline, from a disk or
an e-mail), and the data behind it as plain JSON (``page_data``), which ``attnarena serve``
hands to the same page while a suite runs.

Plotly draws the plots (hover shows a point's run, a legend click hides a mechanism); the
tables are plain HTML that the page's own script sorts and filters. Colours and markers are
the PNGs' (``style.mixer_style``).
"""
from __future__ import annotations

import html
import json
import os
import re
import time
import uuid
from importlib import resources
from pathlib import Path

from attnarena.arena.report.compression import _base_ms, _ms, by_source, compress_markdown
from attnarena.arena.report.leaderboard import (COLUMNS, average_spreads, averages,
                                                common_line, leaderboard_rows,
                                                setting_groups, swept_keys, training_conditions)
from attnarena.arena.report.seeds import SOLVED, call_difference, min_gap
from attnarena.arena.report.speed import crossovers, errors_at_longest, memory_of, sweep_groups
from attnarena.arena.report.style import mixer_style
from attnarena.extras import require

PAGE = "leaderboard.html"
# matplotlib's markers as Plotly's symbols, so a mechanism looks the same in both
SYMBOLS = {"o": "circle", "s": "square", "^": "triangle-up", "D": "diamond",
           "v": "triangle-down", "P": "cross", "X": "x", "<": "triangle-left",
           ">": "triangle-right", "*": "star"}
STATUSES = ("done", "running", "failed", "diverged", "interrupted")


def _style(mixer: str) -> dict:
    style = mixer_style(mixer)
    return {"color": style["color"], "symbol": SYMBOLS.get(style["marker"], "circle")}


def _family(mixer: str) -> str:
    from attnarena.registry import mixer_info

    try:
        return mixer_info(mixer).family
    except ValueError:  # a stack of several mechanisms, or a name since removed
        return "hybrid stack" if ("+" in mixer or "," in mixer or "*" in mixer) else "other"


def _pattern(task: str) -> str:
    from attnarena.tasks.registry import task_class

    try:
        return "causal" if task_class(task).needs_causal else "noncausal"
    except ValueError:
        return "unknown"


def reproduce_command(config: dict) -> str:
    """The command that trains this run again (same config, hence the same run id): an
    ``attnarena train`` line when its options say everything the config holds, else a
    suite file for ``attnarena run --suite``."""
    from attnarena.arena.run.config import RunConfig

    train = config.get("train", {})
    parts = ["attnarena train", f"--task {config['task']}", f"--mixer '{config['mixer']}'",
             f"--preset {config['preset']}", f"--seed {config['seed']}"]
    for flag, key in (("--steps", "steps"), ("--batch", "batch"), ("--lr", "lr")):
        if key in train:
            parts.append(f"{flag} {train[key]:g}" if isinstance(train[key], float)
                         else f"{flag} {train[key]}")
    for flag, values in (("--model", config.get("model", {})),
                         ("--task-option", config.get("task_options", {})),
                         ("--option", config.get("mixer_options", {}))):
        for key, value in sorted(values.items()):
            if key == "data_dir":
                continue
            text = value if isinstance(value, str) else json.dumps(value)
            parts.append(f"{flag} {key}={text}")
    try:
        again = RunConfig(task=config["task"], mixer=config["mixer"], preset=config["preset"],
                          seed=config["seed"], mixer_options=config.get("mixer_options", {}),
                          task_options=config.get("task_options", {}),
                          model=config.get("model", {}),
                          train={k: train[k] for k in ("steps", "batch", "lr") if k in train})
        resolved = again.resolve()
        same = resolved.as_dict() == {**config, "device": resolved["device"]}
    except (ValueError, KeyError):
        same = False
    if same:
        return " ".join(parts)
    return ("attnarena run --suite run.toml  # run.toml:\n" + _suite_text(config))


def _suite_text(config: dict) -> str:
    def toml(value):  # TOML has no null: a None is left out, as if never given
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in sorted(value.items())
                                   if v is not None) + "}"
        return json.dumps(value)
    lines = ["[[runs]]", f"tasks = [{toml(config['task'])}]",
             f"mixers = [{toml(config['mixer'])}]", f"preset = {toml(config['preset'])}",
             f"seeds = [{config['seed']}]"]
    for key in ("model", "train", "task_options", "mixer_options"):
        if config.get(key):
            lines.append(f"{key} = {toml(config[key])}")
    return "\n".join(lines)


def _running(store, out_dir) -> list[dict]:
    """The runs in progress, who holds each lease, and their curves so far (from their
    newest checkpoint under ``out_dir``, when it is given and there is one)."""
    now = time.time()
    found = []
    for run in store.runs(status="running"):
        curve = []
        if out_dir is not None:
            curve = _checkpoint_history(Path(out_dir) / "checkpoints" / run["id"])
        found.append({"id": run["id"], "task": run["task"], "mixer": run["mixer"],
                      "seed": run["seed"], "owner": run["owner"],
                      "heartbeat_age_s": None if run["heartbeat"] is None
                      else round(now - run["heartbeat"], 1),
                      "started": run["started"], "history": curve,
                      "metric": _metric(run["task"])})
    return found


def _metric(task: str) -> str | None:
    from attnarena.tasks.registry import task_class

    try:
        return task_class(task).metric
    except ValueError:
        return None


def _checkpoint_history(folder: Path) -> list:
    steps = sorted(p for p in folder.glob("step-*") if p.is_dir() and "." not in p.name)
    if not steps:
        return []
    try:
        import torch

        state = torch.load(steps[-1] / "state.pt", weights_only=True)
    except Exception:  # being written or removed just now: no curve this time
        return []
    return list(state.get("history", []))


def page_data(store, out_dir=None) -> dict:
    """Everything the page shows, as plain JSON data read from the store (``out_dir``: where
    the checkpoints of running runs are, for their curves so far)."""
    rows = leaderboard_rows(store)
    done = {r["id"]: r for r in store.runs(status="done")}
    runs = []
    for r in rows:
        run = done[r["id"]]
        runs.append({**{k: r[k] for k in COLUMNS}, "higher_is_better": r["higher_is_better"],
                     "settings": r["settings"], "problem": r["problem"],
                     "family": _family(r["mixer"]), "pattern": _pattern(r["task"]),
                     "style": _style(r["mixer"]), "history": run["metrics"].get("history", []),
                     "config": run["config"], "environment": run["environment"],
                     "command": reproduce_command(run["config"]),
                     "resumptions": r.get("resumptions", 0)})
    tasks = []
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        swept = [k for k in swept_keys(mine) if k != "seed"]
        groups = setting_groups(mine)
        top = groups[0]
        tasks.append({
            "task": task, "metric": mine[0]["metric"],
            "higher_is_better": mine[0]["higher_is_better"],
            "common": common_line(mine, swept + ["seed"]), "swept": swept,
            "conditions": training_conditions(mine), "solved_at": SOLVED,
            "groups": [{"mixer": g["mixer"], "settings": {k: g["settings"].get(k)
                                                          for k in swept},
                        "n": g["test"].n, "mean": g["test"].mean, "sd": g["test"].sd,
                        "low": g["test"].low, "high": g["test"].high,
                        "solved": g["test"].reached(SOLVED, g["higher_is_better"]),
                        "solved_at": [r["solved_at"] for r in g["runs"]
                                      if r["solved_at"] is not None and r["test"] >= SOLVED],
                        "vs_best": "best" if g is top else call_difference(
                            g["test"], top["test"], g["higher_is_better"],
                            min_gap(g["metric"])),
                        "family": _family(g["mixer"]), "pattern": _pattern(task),
                        "ids": [r["id"] for r in g["runs"]]} for g in groups]})
    spreads = average_spreads(rows)
    several = len({r["problem"] for r in rows if r["metric"] == "accuracy"}) > 1
    average = [{"mixer": m, "preset": p, "mean": a,
                "sd": spreads[(m, p)].sd if (m, p) in spreads else None,
                "n": spreads[(m, p)].n if (m, p) in spreads else None}
               for m, p, a in averages(rows)] if several else []  # as the Markdown does
    counts = {s: len(store.runs(status=s)) for s in STATUSES}
    return {"generated": time.strftime("%Y-%m-%d %H:%M:%S"), "store": store.label,
            "status": counts, "running": _running(store, out_dir), "runs": runs,
            "tasks": tasks, "averages": average, "speed": _speed(store.speed_rows()),
            "compression": _compression(store.compress_rows()),
            "linearization": _linearization(store.linearize_rows()),
            "styles": {m: _style(m) for m in {r["mixer"] for r in rows}}}


def _speed(rows) -> list[dict]:
    sweeps = []
    for (pass_, causal, batch, heads, head_dim, dtype), (stem, mine) in \
            sweep_groups(rows).items():
        cross, errors = crossovers(mine), errors_at_longest(mine)
        sweeps.append({
            "stem": stem, "pass": pass_, "causal": causal, "batch": batch, "heads": heads,
            "head_dim": head_dim, "dtype": dtype,
            "memory": "decoding state held" if pass_ == "decode" else "peak memory",
            "rows": [{"mixer": r["mixer"], "length": r["length"], "status": r.get("status"),
                      "median_ms": r.get("median_ms"), "q1_ms": r.get("q1_ms"),
                      "q3_ms": r.get("q3_ms"), "memory_mb": memory_of(r),
                      "rel_error": r.get("rel_error"), "style": _style(r["mixer"])}
                     for r in mine],
            "crossover": {m: c for m, c in cross.items()},
            "error": {m: {"length": n, "rel_error": e} for m, (n, e) in errors.items()}})
    return sweeps


def _compression(rows) -> dict:
    if not rows:
        return {}
    points = []
    for source, (base, compressed) in by_source(rows).items():
        for r in [base] + compressed:
            latency = _ms(r, "model", "32")
            base_latency = _base_ms(r, "model", "32")
            points.append({"source": source, "recipe": r["recipe"], "test": r["test"],
                           "metric": r["metric"], "is_float": r is base,
                           "bytes_ratio": r["bytes"] / base["bytes"],
                           "latency_ratio": latency / base_latency
                           if latency and base_latency else None,
                           "backend": r.get("backend", "torch"),
                           "title": f"{source}: {base['mixer']} on {base['task']}"})
    return {"tables": markdown_tables(compress_markdown(rows)), "points": points}


def _linearization(rows) -> dict:
    """The linearization tables, and for linearized encoders the Pareto plot's points:
    agreement with the original (mean cosine) against forward time at the longest length
    timed, the original's beside them."""
    if not rows:
        return {}
    from attnarena.arena.report.compression import pareto
    from attnarena.arena.report.linearization import _variant, linearize_markdown

    points = []
    for r in rows:
        speed = r.get("speed") or {}
        if r["stage"] not in ("original", "finetune") or "mean_cosine" not in r or not speed:
            continue
        longest = max(speed, key=int)
        points.append({"label": "original (softmax)" if r["stage"] == "original"
                       else _variant(r), "source": r["source"],
                       "quality": r["mean_cosine"], "ms": speed[longest]["ms"],
                       "length": int(longest), "style": _style(
                           "softmax" if r["stage"] == "original" else r["mixer"])})
    front = pareto([(p["ms"], p["quality"]) for p in points]) if points else []
    return {"tables": markdown_tables(linearize_markdown(rows)), "points": points,
            "front": front}


def markdown_tables(text: str) -> list[dict]:
    """A report section's Markdown as blocks the page renders: {"kind": "heading" |
    "text" | "table", ...}, tables as header and rows of cells."""
    blocks, table = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if table is None:
                table = {"kind": "table", "head": cells, "rows": []}
                blocks.append(table)
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells if c):
                table["rows"].append(cells)
            continue
        table = None
        if line.startswith("#"):
            blocks.append({"kind": "heading", "text": line.lstrip("#").strip()})
        elif line.strip():
            blocks.append({"kind": "text", "text": line.strip()})
    return blocks


def _asset(name: str) -> str:
    return resources.files("attnarena.arena.report").joinpath("page", name).read_text()


def page_html(data: dict, live: bool = False, refresh_seconds: float = 3.0) -> str:
    """The whole page, data and scripts inline. ``live``: the page asks ``data.json`` for
    fresh data every ``refresh_seconds`` (``attnarena serve``)."""
    plotly = require("plotly.offline", "the web page (leaderboard.html)", "web")
    payload = json.dumps(data, separators=(",", ":"), default=str).replace("</", "<\\/")
    config = json.dumps({"live": live, "refresh_ms": int(refresh_seconds * 1000)})
    # the largest parts last, so that no later replacement searches them
    return (_asset("page.html")
            .replace("{{title}}", html.escape(f"attnarena leaderboard: {data['store']}"))
            .replace("/*STYLE*/", _asset("page.css"))
            .replace("/*APP*/", _asset("app.js"))
            .replace("/*DATA*/", f"let DATA = {payload};\nconst PAGE = {config};")
            .replace("/*PLOTLY*/", plotly.get_plotlyjs().replace("</script", "<\\/script")))


def write_page(store, out_dir) -> Path:
    """Write ``OUT/leaderboard.html`` from the store; returns its path."""
    path = Path(out_dir) / PAGE
    text = page_html(page_data(store, out_dir))
    # a name of this process's own: several processes may report into one folder at once
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
