// The leaderboard page: renders DATA (the store, as plain JSON) into sortable, filterable
// tables and Plotly plots. Under `attnarena serve` it fetches data.json again every few
// seconds and renders anew, keeping the filters, the sort orders and the open run panel.
"use strict";

const state = { family: "", pattern: "", settings: {}, sorts: {}, openRun: null };
const PLOT_CONFIG = { displaylogo: false, responsive: true };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmtMetric(value, metric) {
  if (value === null || value === undefined) return "-";
  return metric === "accuracy" ? value.toFixed(4) : Number(value.toPrecision(4)).toString();
}
function fmtNumber(value, digits) {
  if (value === null || value === undefined) return "-";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits || 0 });
}
function fmtValue(value) {
  if (value === null || value === undefined) return "-";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

// -- filters -------------------------------------------------------------------------------

function sweptSettings() {
  // settings that take more than one value among the finished runs (the seed aside)
  const values = {};
  for (const run of DATA.runs) {
    for (const [key, value] of Object.entries(run.settings)) {
      if (key === "seed") continue;
      (values[key] = values[key] || new Set()).add(JSON.stringify(value));
    }
  }
  return Object.keys(values).filter((k) => values[k].size > 1).sort()
    .map((k) => [k, [...values[k]].sort()]);
}

function visible(item) {
  if (state.family && item.family !== state.family) return false;
  if (state.pattern && item.pattern !== state.pattern) return false;
  for (const [key, wanted] of Object.entries(state.settings)) {
    if (wanted === "") continue;
    const settings = item.settings || {};
    if (!(key in settings) || JSON.stringify(settings[key]) !== wanted) return false;
  }
  return true;
}

function select(label, name, options, current, onchange) {
  const box = el("select", { name, onchange: (e) => onchange(e.target.value) },
    el("option", { value: "", text: "all" }));
  for (const [value, text] of options) {
    const option = el("option", { value, text });
    if (value === current) option.selected = true;
    box.append(option);
  }
  return el("label", {}, label, box);
}

function renderFilters() {
  const nav = document.getElementById("filters");
  nav.replaceChildren();
  const families = [...new Set(DATA.runs.map((r) => r.family))].sort();
  const patterns = [...new Set(DATA.runs.map((r) => r.pattern))].sort();
  nav.append(select("family", "family", families.map((f) => [f, f]), state.family,
    (v) => { state.family = v; renderMain(); }));
  nav.append(select("pattern", "pattern", patterns.map((p) => [p, p]), state.pattern,
    (v) => { state.pattern = v; renderMain(); }));
  for (const [key, values] of sweptSettings()) {
    nav.append(select(key, "setting-" + key, values.map((v) => [v, v.replace(/^"|"$/g, "")]),
      state.settings[key] || "", (v) => { state.settings[key] = v; renderMain(); }));
  }
  const shown = DATA.runs.filter(visible).length;
  nav.append(el("span", { id: "shown", class: "note", text: `${shown} of ${DATA.runs.length} runs shown` }));
}

// -- sortable tables -----------------------------------------------------------------------

function table(id, columns, rows, options) {
  // columns: [{label, value(row) -> raw, show(row) -> text, text: bool}]
  const sort = state.sorts[id];
  if (sort) {
    const column = columns[sort.index];
    rows = [...rows].sort((a, b) => compare(column.value(a), column.value(b)) * sort.direction);
  }
  const head = el("tr", {});
  columns.forEach((column, index) => {
    const th = el("th", { class: column.text ? "text" : null, text: column.label,
      onclick: () => {
        const before = state.sorts[id];
        const direction = before && before.index === index ? -before.direction : (column.text ? 1 : -1);
        state.sorts[id] = { index, direction };
        renderMain();
      } });
    if (sort && sort.index === index) th.setAttribute("aria-sort", sort.direction > 0 ? "ascending" : "descending");
    head.append(th);
  });
  const body = el("tbody", {});
  for (const row of rows) {
    const tr = el("tr", { "data-id": row.id || null, class: options && options.onclick ? "clickable" : null,
      onclick: options && options.onclick ? () => options.onclick(row) : null });
    for (const column of columns) {
      const raw = column.value(row);
      const td = el("td", { class: column.text ? "text" : null,
        "data-value": raw === null || raw === undefined ? "" : (typeof raw === "object" ? JSON.stringify(raw) : String(raw)) });
      const shown = column.show ? column.show(row) : fmtValue(raw);
      if (shown instanceof Node) td.append(shown); else td.textContent = shown;
      tr.append(td);
    }
    body.append(tr);
  }
  return el("table", { id }, el("thead", {}, head), body);
}

function compare(a, b) {
  const missing = (v) => v === null || v === undefined || v === "";
  if (missing(a) && missing(b)) return 0;
  if (missing(a)) return 1;
  if (missing(b)) return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), "en", { numeric: true });
}

function mixerCell(mixer) {
  const style = (DATA.styles[mixer] || { color: "#888" });
  return el("span", {}, el("span", { class: "swatch", style: `background:${style.color}` }), mixer);
}

// -- sections ------------------------------------------------------------------------------

function section(id, title, ...children) {
  return el("section", { id }, el("h2", { text: title }), ...children);
}

function renderRunning() {
  if (!DATA.running.length) return null;
  const rows = DATA.running.map((r) => ({ ...r, family: "", pattern: "" }));
  const part = section("running", `Running now (${rows.length})`,
    el("p", { class: "note", text: "Each run's lease holder and the age of its last heartbeat; curves so far from its newest checkpoint." }),
    table("running-table", [
      { label: "run", value: (r) => r.id, text: true },
      { label: "task", value: (r) => r.task, text: true },
      { label: "mixer", value: (r) => r.mixer, text: true },
      { label: "seed", value: (r) => r.seed },
      { label: "lease holder", value: (r) => r.owner, text: true },
      { label: "heartbeat age (s)", value: (r) => r.heartbeat_age_s },
      { label: "checkpointed steps", value: (r) => (r.history.length ? r.history[r.history.length - 1].step : null) },
    ], rows));
  const withCurves = DATA.running.filter((r) => r.history.length);
  if (withCurves.length) {
    const div = el("div", { class: "plot", id: "running-curves" });
    part.append(div);
    requestAnimationFrame(() => Plotly.react(div, withCurves.map((r) => {
      const key = r.metric && ("val_" + r.metric) in r.history[0] ? "val_" + r.metric : "train_loss";
      return { x: r.history.map((h) => h.step), y: r.history.map((h) => h[key]), mode: "lines+markers",
        name: `${r.mixer} seed ${r.seed}`, line: { color: (DATA.styles[r.mixer] || {}).color } };
    }), { title: { text: "running: validation so far (train loss before the first evaluation)" }, margin: { t: 40, r: 10 }, xaxis: { title: { text: "step" } } }, PLOT_CONFIG));
  }
  return part;
}

function renderAverages() {
  if (!DATA.averages.length) return null;
  return section("averages", "Average over tasks",
    el("p", { class: "note", text: "Test accuracy; per task the best setting of a sweep, averaged over its seeds; ± the standard deviation of per-seed averages where every task ran the same seeds." }),
    table("averages-table", [
      { label: "mixer", value: (r) => r.mixer, show: (r) => mixerCell(r.mixer), text: true },
      { label: "preset", value: (r) => r.preset, text: true },
      { label: "mean test accuracy", value: (r) => r.mean, show: (r) => fmtMetric(r.mean, "accuracy") },
      { label: "sd", value: (r) => r.sd, show: (r) => fmtMetric(r.sd, "accuracy") },
      { label: "n", value: (r) => r.n },
    ], DATA.averages.filter((a) => !state.family || familyOf(a.mixer) === state.family)));
}

function familyOf(mixer) {
  const run = DATA.runs.find((r) => r.mixer === mixer);
  return run ? run.family : "";
}

function renderTask(task) {
  const metric = task.metric;
  const groups = task.groups.filter(visible);
  const runs = DATA.runs.filter((r) => r.task === task.task && visible(r));
  const columns = [{ label: "mixer", value: (g) => g.mixer, show: (g) => mixerCell(g.mixer), text: true }];
  for (const key of task.swept) columns.push({ label: key, value: (g) => g.settings[key] });
  columns.push(
    { label: "n", value: (g) => g.n },
    { label: `test ${metric} (mean)`, value: (g) => g.mean, show: (g) => fmtMetric(g.mean, metric) },
    { label: "sd", value: (g) => g.sd, show: (g) => (g.n > 1 ? fmtMetric(g.sd, metric) : "-") },
    { label: "min", value: (g) => g.low, show: (g) => fmtMetric(g.low, metric) },
    { label: "max", value: (g) => g.high, show: (g) => fmtMetric(g.high, metric) });
  if (metric === "accuracy") {
    columns.push({ label: `solved (≥ ${task.solved_at})`, value: (g) => g.solved, show: (g) => `${g.solved} of ${g.n}` },
      { label: "solved at step", value: (g) => (g.solved_at.length ? Math.min(...g.solved_at) : null),
        show: (g) => (g.solved_at.length ? g.solved_at.map((s) => fmtNumber(s)).join(", ") : "-") });
  }
  columns.push({ label: "vs best", value: (g) => g.vs_best, text: true });
  const part = section("task-" + task.task, task.task,
    task.common ? el("p", { class: "note", text: task.common }) : null,
    el("p", { class: "note", text: "One row per setting: its seeds' mean, standard deviation, range and count; 'vs best' calls a setting worse only where the gap to the best mean exceeds the two standard deviations together (and half a point, for accuracies), else 'within spread'. Click a run in the plots or the table of runs for its details." }),
    table("groups-" + task.task, columns, groups));
  const plots = el("div", { class: "plots" });
  const quality = el("div", { class: "plot", id: "quality-" + task.task });
  const curves = el("div", { class: "plot", id: "curves-" + task.task });
  plots.append(quality, curves);
  part.append(plots);
  requestAnimationFrame(() => {
    plotQuality(quality, task, runs);
    plotCurves(curves, task, runs);
  });
  return part;
}

function byMixer(runs) {
  const out = {};
  for (const run of runs) (out[run.mixer] = out[run.mixer] || []).push(run);
  return out;
}

function runHover(run, swept) {
  const settings = swept.map((k) => `${k}=${fmtValue(run.settings[k])}`).join(", ");
  return `<b>${run.mixer}</b> seed ${run.seed}<br>test ${run.metric} ${fmtMetric(run.test, run.metric)}` +
    `<br>${fmtNumber(run.tokens_per_s)} tokens/s` + (settings ? `<br>${settings}` : "") + `<br>run ${run.id}`;
}

function plotQuality(div, task, runs) {
  const traces = Object.entries(byMixer(runs)).map(([mixer, mine]) => ({
    type: "scatter", mode: "markers", name: mixer, x: mine.map((r) => r.tokens_per_s),
    y: mine.map((r) => r.test), customdata: mine.map((r) => r.id),
    text: mine.map((r) => runHover(r, task.swept)), hovertemplate: "%{text}<extra></extra>",
    marker: { color: DATA.styles[mixer].color, symbol: DATA.styles[mixer].symbol, size: 10 } }));
  const values = runs.map((r) => r.test);
  const yaxis = { title: { text: `test ${task.metric}` } };
  if (task.metric === "accuracy" && values.length) {
    // at least a tenth of the scale, within [0, 1] plus room for the markers: a spread of
    // 0.001 drawn across the whole axis would look like a difference
    const lo = Math.min(...values), hi = Math.max(...values), pad = Math.max(0, 0.1 - (hi - lo)) / 2 + 0.02;
    yaxis.range = [Math.max(-0.02, lo - pad), Math.min(1.02, hi + pad)];
  }
  Plotly.react(div, traces, {
    title: { text: `${task.task}: test ${task.metric} against training throughput`, font: { size: 13 } },
    xaxis: { type: "log", title: { text: "training tokens/s (as each run trained)" } },
    yaxis, margin: { t: 40, r: 10 }, hovermode: "closest",
    legend: { title: { text: "mechanism (click hides)" } } }, PLOT_CONFIG);
  div.on("plotly_click", (event) => openRun(event.points[0].customdata));
}

function plotCurves(div, task, runs) {
  const key = "val_" + task.metric;
  const traces = runs.filter((r) => r.history.length).map((r) => ({
    type: "scatter", mode: "lines", name: `${r.mixer} s${r.seed}`, legendgroup: r.mixer,
    x: r.history.map((h) => h.step), y: r.history.map((h) => h[key]),
    line: { color: DATA.styles[r.mixer].color }, hovertemplate: `${r.mixer} seed ${r.seed}: %{y}<extra></extra>` }));
  Plotly.react(div, traces, {
    title: { text: `${task.task}: validation ${task.metric} against step`, font: { size: 13 } },
    xaxis: { title: { text: "training step" } }, margin: { t: 40, r: 10 }, showlegend: traces.length <= 24 }, PLOT_CONFIG);
}

function renderRuns() {
  const runs = DATA.runs.filter(visible);
  const columns = [
    { label: "task", value: (r) => r.task, text: true },
    { label: "mixer", value: (r) => r.mixer, show: (r) => mixerCell(r.mixer), text: true },
    { label: "family", value: (r) => r.family, text: true },
    { label: "pattern", value: (r) => r.pattern, text: true },
    { label: "seed", value: (r) => r.seed },
    { label: "dim", value: (r) => r.dim },
    { label: "lr", value: (r) => r.lr },
    { label: "metric", value: (r) => r.metric, text: true },
    { label: "test", value: (r) => r.test, show: (r) => fmtMetric(r.test, r.metric) },
    { label: "best val", value: (r) => r.best_val, show: (r) => fmtMetric(r.best_val, r.metric) },
    { label: "train tokens/s", value: (r) => r.tokens_per_s, show: (r) => fmtNumber(r.tokens_per_s) + (r.resumptions ? "*" : "") },
    { label: "peak MiB", value: (r) => r.peak_mem_mb, show: (r) => fmtNumber(r.peak_mem_mb, 1) },
    { label: "params", value: (r) => r.params, show: (r) => fmtNumber(r.params) },
    { label: "steps", value: (r) => r.steps },
    { label: "train s", value: (r) => r.train_seconds, show: (r) => fmtNumber(r.train_seconds, 1) },
    { label: "run", value: (r) => r.id, text: true },
  ];
  return section("runs", `Every finished run (${runs.length})`,
    el("p", { class: "note", text: "Click a row for the run's config, curve, environment and the command that trains it again." }),
    table("runs-table", columns, runs, { onclick: (r) => openRun(r.id) }));
}

function renderSpeed() {
  if (!DATA.speed.length) return null;
  const part = section("speed", "Speed and memory against length");
  for (const sweep of DATA.speed) {
    const rows = sweep.rows.filter((r) => !state.family || familyOf(r.mixer) === state.family);
    part.append(el("h3", { text: `${sweep.pass} pass, ${sweep.causal ? "causal" : "noncausal"}, batch ${sweep.batch}, ${sweep.heads} heads of ${sweep.head_dim}, ${sweep.dtype}` }));
    const mixers = [...new Set(rows.map((r) => r.mixer))];
    const lengths = [...new Set(rows.map((r) => r.length))].sort((a, b) => a - b);
    const summary = mixers.map((m) => {
      const mine = rows.filter((r) => r.mixer === m && r.status === "ok");
      const row = { mixer: m, crossover: sweep.crossover[m], error: sweep.error[m] ? sweep.error[m].rel_error : null };
      for (const n of lengths) { const r = mine.find((x) => x.length === n); row["L" + n] = r ? r.median_ms : null; }
      const longest = mine[mine.length - 1];
      row.memory = longest ? longest.memory_mb : null;
      return row;
    });
    const columns = [{ label: "mixer", value: (r) => r.mixer, show: (r) => mixerCell(r.mixer), text: true }];
    for (const n of lengths) columns.push({ label: `ms at ${n}`, value: (r) => r["L" + n], show: (r) => fmtNumber(r["L" + n], 2) });
    columns.push(
      { label: `${sweep.memory} (MiB, longest)`, value: (r) => r.memory, show: (r) => fmtNumber(r.memory, 1) },
      { label: "crossover vs softmax", value: (r) => r.crossover, show: (r) => (r.mixer === "softmax" ? "baseline" : (r.crossover ? String(r.crossover) : "never")) },
      { label: "rel. error vs softmax", value: (r) => r.error, show: (r) => (r.error === null || r.error === undefined ? "-" : r.error.toExponential(1)) });
    part.append(table("speed-" + sweep.stem, columns, summary));
    const plots = el("div", { class: "plots" });
    const time = el("div", { class: "plot", id: "speed-time-" + sweep.stem });
    const memory = el("div", { class: "plot", id: "speed-memory-" + sweep.stem });
    plots.append(time, memory);
    part.append(plots);
    requestAnimationFrame(() => {
      for (const [div, key, title] of [[time, "median_ms", "median ms per call"], [memory, "memory_mb", sweep.memory + " (MiB)"]]) {
        Plotly.react(div, mixers.map((m) => {
          const mine = rows.filter((r) => r.mixer === m && r.status === "ok" && r[key]).sort((a, b) => a.length - b.length);
          const style = mine.length ? mine[0].style : { color: "#888", symbol: "circle" };
          return { type: "scatter", mode: "lines+markers", name: m, x: mine.map((r) => r.length), y: mine.map((r) => r[key]),
            marker: { color: style.color, symbol: style.symbol, size: 8 }, line: { color: style.color },
            hovertemplate: `${m}: %{y:.3g} at length %{x}<extra></extra>` };
        }), { title: { text: title, font: { size: 13 } }, xaxis: { type: "log", title: { text: "sequence length" } },
          yaxis: { type: "log" }, margin: { t: 40, r: 10 } }, PLOT_CONFIG);
      }
    });
  }
  return part;
}

function renderBlocks(id, title, blocks) {
  const part = section(id, title);
  let count = 0;
  for (const block of blocks) {
    if (block.kind === "heading") part.append(el("h3", { text: block.text }));
    else if (block.kind === "text") part.append(el("p", { class: "note", text: block.text.replace(/`/g, "") }));
    else {
      const numeric = (cell) => Number.isFinite(Number(String(cell).replace(/[,%*x]|\s.*$/g, "")));
      const columns = block.head.map((label, index) => ({ label,
        text: index === 0 || block.rows.every((row) => !numeric(row[index]) || row[index] === "-"),
        value: (row) => { const n = Number(String(row[index]).replace(/[,%*]|\s.*$/g, "")); return Number.isFinite(n) && row[index] !== "" && row[index] !== "-" ? n : row[index]; },
        show: (row) => row[index].replace(/\*\*/g, "").replace(/`/g, "") }));
      part.append(table(`${id}-table-${count++}`, columns, block.rows));
    }
  }
  return part;
}

function renderCompression() {
  const data = DATA.compression;
  if (!data || !data.tables) return null;
  const part = renderBlocks("compression", "Compression", data.tables);
  const div = el("div", { class: "plot", id: "compression-pareto" });
  part.append(div);
  requestAnimationFrame(() => {
    const sources = [...new Set(data.points.map((p) => p.source))];
    Plotly.react(div, sources.map((source) => {
      const mine = data.points.filter((p) => p.source === source);
      return { type: "scatter", mode: "markers", name: mine[0].title, x: mine.map((p) => p.bytes_ratio), y: mine.map((p) => p.test),
        text: mine.map((p) => `${p.recipe} (${p.backend})<br>test ${fmtMetric(p.test, p.metric)}<br>bytes x${p.bytes_ratio.toFixed(3)}` +
          (p.latency_ratio ? `<br>latency x${p.latency_ratio.toFixed(2)}` : "")), hovertemplate: "%{text}<extra></extra>", marker: { size: 9 } };
    }), { title: { text: "quality against weight bytes (relative to float)", font: { size: 13 } },
      xaxis: { type: "log", title: { text: "weight bytes / float" } }, margin: { t: 40, r: 10 } }, PLOT_CONFIG);
  });
  return part;
}

function renderLinearization() {
  const data = DATA.linearization;
  if (!data || !data.tables) return null;
  const part = renderBlocks("linearization", "Linearization", data.tables);
  if (data.points && data.points.length) {
    const div = el("div", { class: "plot", id: "linearization-pareto" });
    part.append(div);
    requestAnimationFrame(() => {
      const front = data.front.map((i) => data.points[i]);
      Plotly.react(div, data.points.map((p) => ({ type: "scatter", mode: "markers", name: `${p.source}: ${p.label}`,
        x: [p.ms], y: [p.quality], marker: { color: p.style.color, symbol: p.style.symbol, size: 10 },
        hovertemplate: `${p.label}<br>mean cosine %{y:.4f}<br>%{x:.2f} ms at length ${p.length}<extra></extra>` }))
        .concat([{ type: "scatter", mode: "lines", name: "Pareto front", x: front.map((p) => p.ms), y: front.map((p) => p.quality),
          line: { color: "#e6550d", dash: "dash" }, hoverinfo: "skip" }]),
      { title: { text: "linearized encoders: agreement against forward time", font: { size: 13 } },
        xaxis: { type: "log", title: { text: "forward ms at the longest length timed" } },
        yaxis: { title: { text: "mean cosine with the original" } }, margin: { t: 40, r: 10 } }, PLOT_CONFIG);
    });
  }
  return part;
}

// -- the run panel -------------------------------------------------------------------------

function openRun(id) {
  const run = DATA.runs.find((r) => r.id === id);
  const panel = document.getElementById("panel");
  if (!run) { panel.hidden = true; state.openRun = null; return; }
  state.openRun = id;
  panel.replaceChildren(
    el("button", { class: "close", text: "close", onclick: () => { panel.hidden = true; state.openRun = null; } }),
    el("h2", { text: `${run.mixer} on ${run.task}, seed ${run.seed}` }),
    el("p", {}, `test ${run.metric} `, el("b", { text: fmtMetric(run.test, run.metric) }),
      `, best validation ${fmtMetric(run.best_val, run.metric)}, ${fmtNumber(run.tokens_per_s)} tokens/s, ` +
      `${fmtNumber(run.params)} parameters, ${run.steps} steps, run ${run.id}`),
    el("h3", { text: "Trains it again" }), el("pre", { class: "command", text: run.command }),
    el("div", { class: "plot", id: "panel-curve", style: "width:480px;height:280px" }),
    el("h3", { text: "Config" }), el("pre", { text: JSON.stringify(run.config, null, 2) }),
    el("h3", { text: "Environment" }), el("pre", { text: JSON.stringify(run.environment, null, 2) }));
  panel.hidden = false;
  const key = "val_" + run.metric;
  Plotly.react("panel-curve", [{ type: "scatter", mode: "lines+markers", x: run.history.map((h) => h.step),
    y: run.history.map((h) => h[key]), name: "validation", line: { color: run.style.color } },
  { type: "scatter", mode: "lines", x: run.history.map((h) => h.step), y: run.history.map((h) => h.train_loss),
    name: "train loss", yaxis: "y2", line: { color: "#999", dash: "dot" } }],
  { margin: { t: 20, r: 40 }, xaxis: { title: { text: "step" } }, yaxis: { title: { text: key } },
    yaxis2: { overlaying: "y", side: "right", title: { text: "train loss" } }, legend: { orientation: "h" } }, PLOT_CONFIG);
}

// -- the whole page ------------------------------------------------------------------------

function renderHeader() {
  document.getElementById("meta").textContent = `store ${DATA.store} · read ${DATA.generated}`;
  const status = document.getElementById("status");
  status.replaceChildren();
  for (const [name, count] of Object.entries(DATA.status)) {
    status.append(el("span", { class: `chip ${name}`, id: `count-${name}`, "data-count": count, text: `${name} ${count}` }));
  }
  if (PAGE.live) status.append(el("span", { class: "chip live", text: `live: every ${PAGE.refresh_ms / 1000} s` }));
}

function renderMain() {
  const main = document.getElementById("main");
  main.replaceChildren();
  renderFilters();
  if (DATA.error) {
    main.append(el("p", { class: "empty", id: "store-error", text: DATA.error }));
  } else if (!DATA.runs.length && !DATA.running.length && !DATA.speed.length) {
    main.append(el("p", { class: "empty", text: "No runs in the store yet." }));
  }
  for (const part of [renderRunning(), renderAverages(), ...DATA.tasks.map(renderTask), renderRuns(),
    renderSpeed(), renderCompression(), renderLinearization()]) {
    if (part) main.append(part);
  }
  if (state.openRun) openRun(state.openRun);
}

function render() {
  renderHeader();
  renderMain();
  document.body.setAttribute("data-rendered", DATA.generated);
}

render();
if (PAGE.live) {
  setInterval(() => {
    fetch("data.json", { cache: "no-store" }).then((r) => r.json()).then((fresh) => {
      DATA = fresh;
      render();
    }).catch(() => {
      document.getElementById("meta").textContent = "the server is not answering; retrying";
    });
  }, PAGE.refresh_ms);
}
