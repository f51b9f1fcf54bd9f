"""The arena's answer to "which mechanism meets my trade-off?": measured quality joined with
time and memory at the user's length, on this machine, and the Pareto set of the three.

Quality comes from the store's finished runs (per task the best setting of a sweep, each
averaged over its seeds; with two or more seeds on every task, two mechanisms' quality
differs only beyond their seeds' spread, the leaderboard's rule); time and memory from the
store's speed rows at that length, measured now for what is missing. Nothing here is
estimated: a mechanism without a figure shows none.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from attnarena.arena.measure.conditions import compare, flags
from attnarena.arena.report.leaderboard import (average_spreads, best_settings,
                                                leaderboard_rows)
from attnarena.arena.report.seeds import Spread, call_difference, min_gap
from attnarena.arena.report.style import mib
from attnarena.arena.report.speed import BASELINE, memory_of
from attnarena.registry import list_mixers, mixer_info


@dataclass(frozen=True)
class Question:
    """What a user asks: a length, a batch, a memory budget (MiB, None: any), whether
    they decode token by token, whether attention must be causal, and which task's quality
    counts (None: every accuracy task in the store)."""

    length: int
    batch: int = 1
    memory: float | None = None
    decode: bool = False
    causal: bool = False
    task: str | None = None
    mixers: tuple = ()  # only these (default: every mechanism with a finished run)
    heads: int = 4
    head_dim: int = 64
    dtype: str = "float32"

    def __post_init__(self):
        from attnarena._validate import check_int, check_real

        check_int(self.length, "length")
        check_int(self.batch, "batch")
        if self.memory is not None:
            check_real(self.memory, "memory", low_open=True)

    @property
    def pattern(self) -> str:
        return "causal" if self.causal or self.decode else "self"


@dataclass
class Choice:
    mixer: str
    quality: float | None = None
    tasks: list = field(default_factory=list)
    time: dict | None = None  # the speed row at the length (fwd pass)
    step: dict | None = None  # the decode row at the length (with decode)
    pareto: bool = False
    over_budget: bool = False
    spread: Spread | None = None  # the quality's spread over seeds (two or more)

    @property
    def memory_mb(self):
        row = self.step if self.step is not None else self.time
        return None if row is None else memory_of(row)

    @property
    def cost(self):
        """The time row the choice is judged by: a decoding step, or a forward pass."""
        return self.step if self.step is not None else self.time


def quality_by_mixer(store, task=None) -> tuple[dict, list]:
    """({mixer: {problem: best mean test accuracy}}, the problems considered)."""
    quality, problems, _ = _quality(store, task)
    return quality, problems


def _quality(store, task=None) -> tuple[dict, list, dict]:
    """``quality_by_mixer``'s two, and {mixer: Spread of its average over the problems,
    seed by seed} where its best settings ran the same two or more seeds everywhere."""
    rows = leaderboard_rows(store)
    if task is not None:
        rows = [r for r in rows if r["task"] == task]
    out = {}
    for (mixer, _, problem), value in best_settings(rows).items():
        out.setdefault(mixer, {})[problem] = value
    problems = sorted({p for per in out.values() for p in per})
    spreads = {}
    for (mixer, _), value in average_spreads(rows).items():  # one preset: one spread
        spreads[mixer] = None if mixer in spreads else value
    return out, problems, {m: v for m, v in spreads.items() if v is not None}


def _speed_rows(store, question) -> dict:
    """{(mixer, pass): the stored speed row at the question's length and settings}, read
    from the store once."""
    found = {}
    for row in store.speed_rows():
        if row.get("length") == question.length and row.get("status") == "ok" \
                and row.get("batch") == question.batch and row.get("heads") == question.heads \
                and row.get("head_dim") == question.head_dim \
                and row.get("dtype") == question.dtype \
                and bool(row.get("causal")) == (question.pattern == "causal"):
            found[(row.get("mixer"), row.get("pass"))] = row
    return found


def _measure(store, question, mixers, pass_, progress, log):
    """Time ``mixers`` at the question's length (one speed sweep), recording each row."""
    from attnarena.arena.measure.environment import environment
    from attnarena.arena.measure.speed import SpeedConfig, run_speed, speed_case_id

    cfg = SpeedConfig(mixers=list(mixers), lengths=[question.length], pass_=pass_,
                      batch=question.batch, heads=question.heads, head_dim=question.head_dim,
                      dtype=question.dtype, causal=question.pattern == "causal")
    env = environment(cfg.device)
    log(f"measuring {len(mixers)} mechanisms at L={question.length} ({pass_} pass) on this "
        "machine")

    def record(spec, length, row):
        store.add_speed(speed_case_id(cfg, spec, length, env), row, "choose", env)

    run_speed(cfg, progress=progress, on_row=record)


def choose(store, question: Question, *, measure=True, progress=True, log=print) -> dict:
    """Join quality, time and memory for ``question``; measure missing timings when
    ``measure`` (recorded in the store). Returns plain data: the choices, the Pareto set,
    one sentence of conclusion and the conditions it holds under.

    Raises:
        ValueError: no mechanism to compare (no finished runs and no ``mixers``).
    """
    quality, problems, spreads = _quality(store, question.task)
    names = list(question.mixers) or sorted(m for m in quality if m in list_mixers())
    if not names:
        raise ValueError("no finished runs in the store to take quality from; run `attnarena "
                         "run` first, or name mechanisms with --mixers")
    if BASELINE not in names:
        names.append(BASELINE)
    unknown = [n for n in names if n not in list_mixers()]
    if unknown:
        raise ValueError(f"unknown mechanism(s) {', '.join(unknown)}; see `attnarena list`")
    names = [n for n in names if question.pattern in mixer_info(n).patterns
             and (not question.decode or mixer_info(n).decodes)]
    passes = ["fwd"] + (["decode"] if question.decode else [])
    stored = _speed_rows(store, question)
    if measure:
        for pass_ in passes:
            missing = [n for n in names if (n, pass_) not in stored]
            if missing:
                _measure(store, question, missing, pass_, progress, log)
                stored = _speed_rows(store, question)
    choices = []
    for name in names:
        per_task = quality.get(name, {})
        choice = Choice(name, time=stored.get((name, "fwd")),
                        step=stored.get((name, "decode")) if question.decode else None,
                        tasks=sorted(per_task))
        if per_task and set(per_task) == set(problems):
            choice.quality = sum(per_task.values()) / len(per_task)
            choice.spread = spreads.get(name)
        choice.over_budget = question.memory is not None and choice.memory_mb is not None \
            and choice.memory_mb > question.memory
        choices.append(choice)
    _mark_pareto([c for c in choices if not c.over_budget and c.quality is not None
                  and c.cost is not None])
    return {"question": question, "choices": choices, "problems": problems,
            "pareto": [c.mixer for c in choices if c.pareto],
            "conclusion": conclusion(question, choices, problems),
            "conditions": _conditions(choices)}


def compare_quality(a: Choice, b: Choice) -> str:
    """"better", "worse" or "same": beyond the seeds' spread when both ran two or more
    seeds (the leaderboard's rule: the gap between the means exceeds the two standard
    deviations together, and half a point); by the means when either ran one seed."""
    if a.spread is not None and b.spread is not None:
        called = call_difference(a.spread, b.spread, min_gap=min_gap("accuracy"))
        return called if called in ("better", "worse") else "same"
    return "better" if a.quality > b.quality else "worse" if a.quality < b.quality else "same"


def _dominates(a: Choice, b: Choice) -> bool:
    """``a`` is at least as good as ``b`` in quality (within the seeds' spread), time
    (within the timing's spread) and memory, and better in one."""
    time, quality = compare(a.cost, b.cost), compare_quality(a, b)
    if quality == "worse" or time == "slower" or a.memory_mb > b.memory_mb:
        return False
    return quality == "better" or time == "faster" or a.memory_mb < b.memory_mb


def _mark_pareto(candidates: list) -> None:
    for c in candidates:
        c.pareto = not any(_dominates(o, c) for o in candidates if o is not c)


def _conditions(choices) -> dict:
    rows = [c.cost for c in choices if c.cost is not None]
    env = next((r.get("environment") for r in rows if r.get("environment")), {}) or {}
    return {"hardware": env.get("hardware"), "threads": env.get("threads"),
            "torch": env.get("torch"),
            "flagged": sorted(c.mixer for c in choices if c.cost is not None
                              and (c.cost.get("flags") or flags(c.cost)))}


def conclusion(question: Question, choices, problems) -> str:
    """One sentence: the Pareto set, the fastest, the lightest, the best, and what the
    sentence rests on."""
    timed = [c for c in choices if c.cost is not None and not c.over_budget]
    if not timed:
        kind = "causal" if question.pattern == "causal" else "noncausal"
        budget = " within the memory budget" if question.memory is not None else ""
        return (f"No mechanism was timed at L={question.length} ({kind}, batch "
                f"{question.batch}){budget}, so there is nothing to conclude; without "
                "--no-measure the missing timings are measured.")
    fastest = min(timed, key=lambda c: c.cost["median_ms"])
    lightest = min((c for c in timed if c.memory_mb is not None),
                   key=lambda c: c.memory_mb, default=None)
    ranked = [c for c in timed if c.quality is not None]
    best = max(ranked, key=lambda c: c.quality, default=None)
    what = "a decoding step" if question.decode else "a forward pass"
    pareto = [c.mixer for c in choices if c.pareto]
    facts = [f"the fastest is {fastest.mixer} ({fastest.cost['median_ms']:.2f} ms)"]
    if lightest is not None:
        facts.append(f"the lightest {lightest.mixer} ({mib(lightest.memory_mb)} MiB)")
    if best is not None:
        tied = [c.mixer for c in ranked if c is not best and compare_quality(best, c) == "same"
                and best.spread is not None and c.spread is not None]
        facts.append(f"the best quality {best.mixer} ({100 * best.quality:.1f}%"
                     + (f"; {', '.join(tied)} within its seeds' spread" if tied else "") + ")")
    sentence = f"At L={question.length:,} (batch {question.batch}, {what}) "
    sentence += (f"the Pareto set of quality, time and memory is {', '.join(pareto)}; "
                 if pareto else "")
    sentence += ", ".join(facts)
    tasks = ", ".join(problems) if problems else "no task"
    return (sentence + f". It holds on this machine, for quality measured on {tasks} "
            f"(their own lengths, not {question.length:,}).")


def _time_text(row) -> str:
    if row is None:
        return "-"
    text = f"{row['median_ms']:.2f}"
    if row.get("q1_ms") is not None and row.get("q3_ms") is not None:
        text += f" ±{(row['q3_ms'] - row['q1_ms']) / 2:.2g}"
    marks = row.get("flags") or []
    return text + (f" ({', '.join(marks)})" if marks else "")


def choice_markdown(result: dict) -> str:
    """The joined table of ``choose``'s result, then its conclusion."""
    question, problems = result["question"], result["problems"]
    head = ["mechanism", f"quality ({len(problems)} tasks)", f"ms at L={question.length}",
            "peak MiB"]
    if question.decode:
        head += ["step ms", "state MiB"]
    head += ["Pareto", "note"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    order = sorted(result["choices"], key=lambda c: (not c.pareto, -(c.quality or -1.0)))
    for c in order:
        notes = []
        if c.quality is None and c.tasks:
            notes.append(f"ran {len(c.tasks)} of the {len(problems)} tasks")
        if c.quality is None and not c.tasks:
            notes.append("no finished run")
        if c.over_budget:
            notes.append("over the memory budget")
        if c.cost is None:
            notes.append("not timed at this length")
        cells = [c.mixer, _quality_text(c),
                 _time_text(c.time),
                 mib(None if c.time is None else c.time.get("peak_mem_mb"))]
        if question.decode:
            cells += [_time_text(c.step), mib(None if c.step is None
                                              else c.step.get("state_mb"))]
        cells += ["yes" if c.pareto else "", "; ".join(notes)]
        lines.append("| " + " | ".join(cells) + " |")
    conditions = result["conditions"]
    where = ", ".join(str(v) for v in (conditions.get("hardware"),
                                       conditions.get("threads") and
                                       f"{conditions['threads']} threads",
                                       conditions.get("torch") and
                                       f"torch {conditions['torch']}") if v)
    lines += ["", result["conclusion"] + (f" ({where}.)" if where else "")]
    if conditions["flagged"]:
        lines.append(f"Timed on a busy machine or with a wide spread: "
                     f"{', '.join(conditions['flagged'])}; measure again when it is idle.")
    return "\n".join(lines)


def _quality_text(c: Choice) -> str:
    """``97.3%``, or over seeds ``97.3% ± 1.2 (n = 5)``."""
    if c.quality is None:
        return "-"
    if c.spread is None:
        return f"{100 * c.quality:.1f}%"
    return f"{100 * c.quality:.1f}% ± {100 * c.spread.sd:.1f} (n = {c.spread.n})"


def store_answer(store) -> str | None:
    """The joined table at the longest forward length the store's sweeps measured, from
    stored figures only (no measuring), for the leaderboard's opening; None without both
    finished runs and speed rows."""
    rows = [r for r in store.speed_rows() if r.get("pass") == "fwd" and r.get("status") == "ok"
            and r.get("heads") is not None]
    quality, _ = quality_by_mixer(store)
    if not rows or not quality:
        return None
    longest = max(rows, key=lambda r: r["length"])
    question = Question(length=longest["length"], batch=longest["batch"],
                        causal=bool(longest.get("causal")), heads=longest["heads"],
                        head_dim=longest["head_dim"], dtype=longest.get("dtype", "float32"),
                        mixers=tuple(sorted({r["mixer"] for r in rows
                                             if r["length"] == longest["length"]
                                             and r["mixer"] in list_mixers()})))
    try:
        result = choose(store, question, measure=False)
    except ValueError:
        return None
    return choice_markdown(result)
