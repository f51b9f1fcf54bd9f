"""The leaderboard page in a real browser (headless Chromium driven by Playwright): it loads
offline with no console errors and no network requests, sorts and filters as the store's
values say, shows a run's values on hover, equals `attnarena report --format json`, and
under `attnarena serve` shows a run move from running to done. Screenshots at 1280 x 800
go to results/screenshots/ of the checkout, for a person to look at."""
import json
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from attnarena.arena.report.web import markdown_tables, page_data, reproduce_command
from attnarena.arena.run.config import RunConfig
from attnarena.arena.run.suite import load_suite
from attnarena.arena.store import Store
from attnarena.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "results" / "screenshots"

SUITE = """
name = "web"
[[runs]]
tasks = ["copy"]
mixers = ["softmax", "linear", "gla"]
seeds = [0, 1]
train = { steps = 12, eval_every = 4, eval_examples = 64, batch = 8 }
model = { dim = 16, depth = 1, heads = 2 }
[[compress]]
mixers = ["gla"]
recipes = [{method = "int8_dynamic"}]
[speed]
mixers = ["softmax", "linear"]
lengths = [32, 64]
passes = ["fwd"]
repeats = 1
"""


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium: `make test` installs Debian's chromium package")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    """A suite of three mechanisms x two seeds, a speed sweep and a compression, reported."""
    from attnarena.arena.run.runner import run_suite

    folder = tmp_path_factory.mktemp("web")
    suite = folder / "web.toml"
    suite.write_text(SUITE)
    run_suite(str(suite), store_path=folder / "a.sqlite", out_dir=folder / "out",
              progress=False, log=lambda line: None)
    # a linearized MiniLM (two steps) for the linearization section and its Pareto plot
    assert main(["linearize", "--model", "minilm", "--mixer", "hedgehog", "--steps", "2",
                 "--batch", "4", "--lengths", "16,32", "--eval-sentences", "16", "--store",
                 str(folder / "a.sqlite"), "--out", str(folder / "out"), "--quiet"]) == 0
    return folder


def _open(browser, url):
    """A 1280 x 800 page at ``url``, recording console errors and every request made."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    seen = {"errors": [], "requests": []}
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.goto(url)
    page.wait_for_selector("body[data-rendered]")
    return page, seen


def _column(page, table, label):
    """The data-value of each row's cell under the header ``label``."""
    heads = page.locator(f"#{table} thead th").all_inner_texts()
    index = [h.strip() for h in heads].index(label) + 1
    return page.locator(f"#{table} tbody tr td:nth-child({index})").evaluate_all(
        "cells => cells.map(c => c.dataset.value)")


def test_the_page_is_the_store_sorted_filtered_and_hovered(browser, arena, capsys):
    html = arena / "out" / "leaderboard.html"
    page, seen = _open(browser, html.as_uri())
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "leaderboard.png"))
    assert seen["errors"] == []
    assert seen["requests"] == [html.as_uri()]  # nothing fetched: offline, self-contained

    # the numbers equal `attnarena report --format json`'s, run by run
    assert main(["report", "--store", str(arena / "a.sqlite"), "--out", str(arena / "r"),
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    for row in rows:
        cells = page.locator(f'#runs-table tr[data-id="{row["id"]}"] td').evaluate_all(
            "cells => cells.map(c => c.dataset.value)")
        heads = [h.strip() for h in page.locator("#runs-table thead th").all_inner_texts()]
        shown = dict(zip(heads, cells))
        for key, label in (("test", "test"), ("best_val", "best val"), ("params", "params"),
                           ("tokens_per_s", "train tokens/s"), ("seed", "seed"),
                           ("peak_mem_mb", "peak MiB"), ("steps", "steps")):
            assert float(shown[label]) == row[key], (row["id"], key)
    assert sorted(_column(page, "runs-table", "run")) == sorted(r["id"] for r in rows)

    # sorting a column orders the rows as the store's values do, both ways
    page.locator("#runs-table thead th", has_text="best val").click()
    got = [float(v) for v in _column(page, "runs-table", "best val")]
    assert got == sorted((r["best_val"] for r in rows), reverse=True)
    page.locator("#runs-table thead th", has_text="best val").click()
    assert [float(v) for v in _column(page, "runs-table", "best val")] == sorted(got)
    page.locator("#runs-table thead th", has_text="mixer").first.click()
    assert _column(page, "runs-table", "mixer") == sorted(r["mixer"] for r in rows)

    # filtering by family hides the others, in the tables and the plots
    page.select_option("select[name=family]", "decayed linear attention")
    assert set(_column(page, "runs-table", "mixer")) == {"gla"}
    assert page.locator("#groups-copy tbody tr").count() == 1
    names = page.evaluate("() => document.getElementById('quality-copy').data.map(t => t.name)")
    assert names == ["gla"]
    page.select_option("select[name=family]", "")
    assert len(_column(page, "runs-table", "mixer")) == len(rows)

    # the per-task table: one row per mechanism, n = 2 seeds, mean of the store's values
    means = {m: sum(r["test"] for r in rows if r["mixer"] == m) / 2 for m in
             ("softmax", "linear", "gla")}
    assert _column(page, "groups-copy", "n") == ["2", "2", "2"]
    for mixer, mean in means.items():
        cell = page.locator(f'#groups-copy tr:has(td[data-value="{mixer}"]) td').nth(2)
        assert float(cell.get_attribute("data-value")) == pytest.approx(mean, abs=1e-12)

    # hovering a point shows its run's values from the store
    target = next(r for r in rows if r["mixer"] == "linear" and r["seed"] == 1)
    page.locator("#quality-copy").scroll_into_view_if_needed()
    box = page.evaluate("""id => {
        const gd = document.getElementById('quality-copy');
        const trace = gd._fullData.findIndex(t => t.customdata && t.customdata.includes(id));
        const k = gd._fullData[trace].customdata.indexOf(id);
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const r = gd.getBoundingClientRect();
        return {x: r.left + xa._offset + xa.l2p(Math.log10(gd._fullData[trace].x[k])),
                y: r.top + ya._offset + ya.l2p(gd._fullData[trace].y[k])};
    }""", target["id"])
    page.mouse.move(box["x"], box["y"])
    page.wait_for_selector(".hoverlayer .hovertext")
    hover = page.locator("#quality-copy .hoverlayer").text_content()
    assert target["id"] in hover and f"{target['test']:.4f}" in hover
    page.screenshot(path=str(SHOTS / "leaderboard-hover.png"))

    # a run's panel: config, environment and the command that trains it again
    page.locator(f'#runs-table tr[data-id="{target["id"]}"]').click()
    assert page.locator("#panel").is_visible()
    command = page.locator("#panel pre.command").inner_text()
    assert "attnarena run --suite run.toml" in command and '"linear"' in command
    page.screenshot(path=str(SHOTS / "leaderboard-run.png"))
    assert page.locator("#compression table").count() >= 1
    assert page.locator("#speed table").count() == 1
    names = page.evaluate(
        "() => document.getElementById('linearization-pareto').data.map(t => t.name)")
    assert names[-1] == "Pareto front" and "minilm: original (softmax)" in names
    page.locator("#panel button.close").click()
    assert not page.locator("#panel").is_visible()
    page.locator("#linearization").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "leaderboard-linearization.png"))
    assert seen["errors"] == []
    page.close()


def test_the_command_of_a_run_trains_the_same_run(tmp_path):
    """What a run's panel says to type resolves to that run again: an `attnarena train`
    line where its options say everything, else a suite file."""
    from attnarena.cli import build_parser, train_config

    kinds = []
    for config in (RunConfig(task="mqar", mixer="3*gla+softmax", seed=3,
                             model={"depth": 4, "dim": 32}, train={"lr": 1e-3, "steps": 50},
                             task_options={"pairs": 4}, mixer_options={"chunk_size": 8}),
                   RunConfig(task="copy", mixer="gla", train={"eval_every": 4})):
        resolved = config.resolve()
        command = reproduce_command(json.loads(json.dumps(dict(resolved))))
        if command.startswith("attnarena train"):
            again = train_config(build_parser().parse_args(shlex.split(command)[1:])).resolve()
            kinds.append("train")
        else:
            path = tmp_path / "run.toml"
            path.write_text(command.split("\n", 1)[1])
            [again] = load_suite(str(path)).runs
            kinds.append("suite")
        assert again.id == resolved.id, command
    assert kinds == ["train", "suite"]


def test_report_sections_become_tables_of_cells():
    blocks = markdown_tables("## Compressed\n\nSome words.\n\n| a | b |\n|---|---:|\n"
                             "| x | 1.5 |\n| y | **2** |\n")
    assert blocks == [{"kind": "heading", "text": "Compressed"},
                      {"kind": "text", "text": "Some words."},
                      {"kind": "table", "head": ["a", "b"],
                       "rows": [["x", "1.5"], ["y", "**2**"]]}]


SLOW = """
name = "live"
[[runs]]
tasks = ["copy"]
mixers = ["gla"]
train = { steps = 200, eval_every = 20, eval_examples = 32, batch = 8 }
model = { dim = 16, depth = 1, heads = 2 }
"""


def test_serve_shows_a_run_move_from_running_to_done(browser, tmp_path):
    from attnarena.arena.report.serve import make_server

    suite, store, out = tmp_path / "live.toml", tmp_path / "a.sqlite", tmp_path / "out"
    suite.write_text(SLOW)
    server = make_server(str(store), str(out), port=0, refresh_seconds=0.5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d/" % server.server_address[1]
    try:
        page, seen = _open(browser, url)
        assert "no results store" in page.locator("#store-error").inner_text()
        process = subprocess.Popen([sys.executable, "-m", "attnarena", "run", "--suite",
                                    str(suite), "--store", str(store), "--out", str(out),
                                    "--quiet"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        try:
            page.wait_for_selector('#count-running[data-count="1"]', timeout=120_000)
            page.wait_for_selector("#running-table td", timeout=30_000)
            owner = page.locator("#running-table tbody td").nth(4).inner_text()
            assert owner == Store(store, readonly=True).runs(status="running")[0]["owner"]
            page.wait_for_selector("#running-curves", timeout=60_000)  # curves so far
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "serve-running.png"))
            page.wait_for_selector('#count-done[data-count="1"]', timeout=180_000)
            assert page.locator("#count-running").get_attribute("data-count") == "0"
            page.screenshot(path=str(SHOTS / "serve-done.png"))
        finally:
            _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        assert seen["errors"] == []
        assert {u.split("?")[0] for u in seen["requests"]} <= {url, url + "data.json"}
        page.close()
    finally:
        server.shutdown()
        server.server_close()


def test_serve_refuses_a_port_in_use_in_one_line(capsys):
    from attnarena.arena.report.serve import make_server

    first = make_server("none.sqlite", port=0)
    try:
        port = first.server_address[1]
        assert main(["serve", "--port", str(port)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "choose another --port" in err
    finally:
        first.server_close()


def test_page_data_is_plain_json_of_the_store(arena):
    data = page_data(Store(arena / "a.sqlite", readonly=True), arena / "out")
    assert json.loads(json.dumps(data)) == data
    assert data["status"]["done"] == 6 and len(data["runs"]) == 6
    assert {g["n"] for g in data["tasks"][0]["groups"]} == {2}
    assert time.strptime(data["generated"], "%Y-%m-%d %H:%M:%S")
