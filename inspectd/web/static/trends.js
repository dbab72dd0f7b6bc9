// Trends page: one individuals control chart per metric (uPlot), rule breaks marked, the baseline picked by
// dragging across a chart, sample means with their 95 % CI, the alarms. Every number comes from /api/trends/...;
// every string from the server goes through textContent (inspectd.el), never innerHTML.
"use strict";
inspectd.nav("trends");

const COLORS = { value: "#1a73e8", centre: "#1b7f3b", limit: "#b3261e", spec: "#e37400", sample: "rgba(106, 27, 154, 0.6)",
  baseline: "rgba(26, 115, 232, 0.13)", zoneA: "#fbe3d5", zoneB: "#fff6d6", zoneC: "#eaf6ea" };
const REFRESH_MS = 5000;

const trends = {
  metrics: [],          // [{name, unit}] the journal's numeric parameters
  charts: new Map(),    // metric -> {card, plot, data, ...}
  baseline: { source: null, from: null, to: null },  // source: "chosen" | "saved" | "provisional"
  settings: null,       // what /api/trends/settings says
  timer: null,
};

// ---- small helpers ------------------------------------------------------------------------

function timeOf(iso, withDate = false) {
  const moment = iso ? new Date(iso) : null;
  if (!moment || isNaN(moment)) return "–";
  return withDate ? moment.toLocaleString() : moment.toLocaleTimeString();
}

function unitText(unit) { return unit === "1" ? "" : unit === "um" ? "µm" : unit === "um2" ? "µm²" : unit; }

function number(value, unit, digits = 3) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  const magnitude = Math.abs(value);
  const text = magnitude >= 1000 ? value.toFixed(0) : magnitude >= 100 ? value.toFixed(1) : value.toPrecision(digits);
  const suffix = unitText(unit);
  return suffix ? `${text} ${suffix}` : text;
}

function nearestIndex(sorted, target) {
  let low = 0, high = sorted.length - 1;
  if (high < 0) return -1;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (sorted[middle] < target) low = middle + 1; else high = middle;
  }
  if (low > 0 && Math.abs(sorted[low - 1] - target) <= Math.abs(sorted[low] - target)) return low - 1;
  return low;
}

function readSeq(id) {
  const text = document.getElementById(id).value.trim();
  if (!text) return null;
  const value = Number(text);
  return Number.isInteger(value) && value >= 1 ? value : NaN;
}

function notice(text, kind = "error") {
  const box = document.getElementById("notice");
  if (!text) { box.replaceChildren(); return; }
  inspectd.showMessage(box, text, kind);
}

// ---- the query ----------------------------------------------------------------------------

function seriesQuery(metric) {
  const params = new URLSearchParams({ metric, rule_set: document.getElementById("rule-set").value });
  const range = document.querySelector("input[name=range]:checked").value;
  if (range === "seq") {
    const from = readSeq("from-seq"), to = readSeq("to-seq");
    if (Number.isNaN(from) || Number.isNaN(to)) throw new Error("the seq range needs whole numbers from 1 up");
    if (from) params.set("from_seq", from);
    if (to) params.set("to_seq", to);
  } else {
    params.set("last", document.getElementById("last").value || "500");
  }
  if (trends.baseline.source === "chosen") {
    const from = readSeq("baseline-from"), to = readSeq("baseline-to");
    if (!from || !to || Number.isNaN(from) || Number.isNaN(to)) throw new Error("the baseline needs a first and a last seq");
    params.set("baseline_from", Math.min(from, to));
    params.set("baseline_to", Math.max(from, to));
  }
  return `/api/trends/series?${params}`;
}

function setBaseline(source, from, to) {
  trends.baseline = { source, from, to };
  document.getElementById("baseline-from").value = from ?? "";
  document.getElementById("baseline-to").value = to ?? "";
  const label = { chosen: "chosen (not saved yet)", saved: "saved: the alarms use it",
    provisional: "first 20 frames shown — drag across a chart to choose" }[source] || "drag across a chart to choose";
  document.getElementById("baseline-source").textContent = label;
  document.getElementById("use-saved").hidden = !(trends.settings && trends.settings.settings) || source === "saved";
}

// ---- loading ------------------------------------------------------------------------------

async function start() {
  let listing;
  try {
    [listing, trends.settings] = await Promise.all([inspectd.json("/api/trends/metrics"), inspectd.json("/api/trends/settings")]);
  } catch (error) {
    notice(`Cannot load the trends: ${error.message}`);
    trends.timer = setTimeout(start, REFRESH_MS);
    return;
  }
  trends.metrics = listing.metrics;
  trends.rules = listing.rules;
  const select = document.getElementById("add-metric");
  select.replaceChildren(...listing.metrics.map(m => {
    const option = inspectd.el("option", unitText(m.unit) ? `${m.name} (${unitText(m.unit)})` : m.name);
    option.value = m.name;
    return option;
  }));
  const saved = trends.settings.settings;
  let shown = listing.default;
  if (saved) {
    document.getElementById("rule-set").value = saved.rule_set;
    shown = [...new Set([...listing.default, ...Object.keys(saved.metrics)])];
    setBaseline("saved", saved.baseline.first_seq, saved.baseline.last_seq);
  } else {
    setBaseline("provisional", null, null);
  }
  if (!listing.metrics.length) notice("The journal holds no measured frames yet: the charts appear with the first ones.", "info");
  for (const metric of shown) addChart(metric);
  await refresh();
}

async function refresh() {
  clearTimeout(trends.timer);
  const jobs = [...trends.charts.keys()].map(loadChart);
  jobs.push(loadAlarms());
  await Promise.all(jobs);
  if (document.getElementById("follow").checked && document.querySelector("input[name=range]:checked").value === "latest") {
    trends.timer = setTimeout(refresh, REFRESH_MS);
  }
}

async function loadChart(metric) {
  const chart = trends.charts.get(metric);
  if (!chart) return;
  let series;
  try {
    series = await inspectd.json(seriesQuery(metric));
  } catch (error) {
    inspectd.showMessage(chart.status, `${metric}: ${error.message}`);
    return;
  }
  chart.status.replaceChildren();
  // Following new frames asks every few seconds: redraw only when something changed, so the hover stays put.
  const seqs = series.points.seq;
  const signature = JSON.stringify([seqs.length, seqs[0], seqs[seqs.length - 1], series.limits, series.rule_set,
    series.breaks.map(b => [b.rule, b.first_seq, b.last_seq])]);
  if (chart.signature === signature && chart.plot) return;
  chart.signature = signature;
  chart.series = series;
  if (trends.baseline.source === "provisional" && series.limits && metric === [...trends.charts.keys()][0]) {
    setBaseline("provisional", series.limits.baseline_first_seq, series.limits.baseline_last_seq);
  }
  drawChart(chart);
  document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
}

async function loadAlarms() {
  let view;
  try {
    view = await inspectd.json("/api/trends/alarms");
  } catch (error) {
    inspectd.showMessage(document.getElementById("alarm-note"), `Cannot load the alarms: ${error.message}`);
    return;
  }
  trends.settings = view;
  const note = document.getElementById("alarm-note");
  note.textContent = view.note;
  note.className = `alarm-note ${view.mode}`;
  const savedLine = document.getElementById("saved-line");
  const saved = view.settings;
  if (view.settings_problem) {
    savedLine.replaceChildren(inspectd.el("span", `Saved settings unreadable: ${view.settings_problem}`, "message error"));
  } else if (!saved || !Object.keys(saved.metrics).length) {
    savedLine.textContent = "No alarm settings saved: pick a baseline, then “Save as alarm settings”.";
  } else {
    const rules = saved.rule_set === "nelson" ? "Nelson 1–8" : "Western Electric 1–4";
    savedLine.textContent = `Watching ${Object.keys(saved.metrics).join(", ")} · ${rules} · baseline seq ` +
      `${saved.baseline.first_seq}–${saved.baseline.last_seq} · saved ${timeOf(saved.saved_time, true)}`;
  }
  if (view.monitor && view.monitor.problem) savedLine.appendChild(inspectd.el("div", view.monitor.problem, "message error"));
  const list = document.getElementById("alarm-list");
  const items = [...view.alarms].reverse().map(alarm => {
    const item = inspectd.el("li");
    item.dataset.rule = alarm.rule;
    item.dataset.metric = alarm.metric;
    const head = inspectd.el("div");
    head.appendChild(inspectd.el("b", `${alarm.rule} · ${alarm.metric}${alarm.direction ? ` · ${alarm.direction}` : ""}`));
    item.appendChild(head);
    item.appendChild(inspectd.el("div", alarm.rule_name));
    const window = alarm.window;
    const last = alarm.values[alarm.values.length - 1];
    item.appendChild(inspectd.el("div", `seq ${window.first_seq}–${window.last_seq} (${window.points} frames) · last ${number(last, alarm.unit)}`));
    const published = view.mode === "daemon" && view.publishing ? `published ${timeOf(alarm.time, true)}` : `seen at ${timeOf(alarm.time, true)} (not published)`;
    item.appendChild(inspectd.el("div", published, "when"));
    item.addEventListener("click", () => showFrame(alarm.metric, window.last_seq));
    return item;
  });
  if (!items.length) items.push(inspectd.el("li", saved ? "No rule break on the watched metrics." : "No alarms: nothing is watched yet.", "none"));
  if (!items[0].dataset.rule) { items[0].style.borderLeftColor = "var(--pass)"; items[0].style.background = "#eef7f0"; items[0].style.cursor = "default"; }
  list.replaceChildren(...items);
}

// ---- one chart ----------------------------------------------------------------------------

function addChart(metric) {
  if (trends.charts.has(metric)) return;
  const info = trends.metrics.find(m => m.name === metric) || { name: metric, unit: "1" };
  const card = inspectd.el("div", null, "card chart-card");
  card.dataset.metric = metric;
  const title = inspectd.el("h2", metric);
  title.appendChild(inspectd.el("span", unitText(info.unit) ? `(${unitText(info.unit)})` : "", "unit"));
  const remove = inspectd.el("button", "remove", "plain remove");
  remove.type = "button";
  remove.addEventListener("click", () => { const c = trends.charts.get(metric); if (c.plot) c.plot.destroy(); card.remove(); trends.charts.delete(metric); });
  title.appendChild(remove);
  card.appendChild(title);
  const chart = { metric, card, plot: null, series: null };
  chart.limitsLine = card.appendChild(inspectd.el("div", "loading…", "limits-line"));
  const key = card.appendChild(inspectd.el("div", null, "key"));
  for (const [cls, text] of [["k-value", "value per frame"], ["k-centre", "centre"], ["k-limit", "±3σ limits"],
    ["k-zones", "zones 1σ / 2σ / 3σ"], ["k-baseline", "baseline"], ["k-break", "rule break"],
    ["k-sample", "part mean ± 95 % CI"], ["k-spec", "verdict rule"]]) key.appendChild(inspectd.el("span", text, cls));
  chart.status = card.appendChild(inspectd.el("div"));
  chart.holder = card.appendChild(inspectd.el("div", null, "plot"));
  chart.hover = card.appendChild(inspectd.el("div", "\u00a0", "hover"));
  chart.breaks = card.appendChild(inspectd.el("div", null, "breaks"));
  chart.samples = card.appendChild(inspectd.el("details", null, "samples"));
  document.getElementById("charts").appendChild(card);
  trends.charts.set(metric, chart);
}

// The value axis spans the frames and the control limits. Part-mean CIs and the verdict rule's limit are drawn
// when they fall inside; they never widen the axis, so a far-away limit cannot flatten the process to a line.
function yRange(series) {
  const values = [...series.points.value];
  const limits = series.limits;
  if (limits) values.push(limits.ucl, limits.lcl);
  const low = Math.min(...values), high = Math.max(...values);
  const pad = Math.max((high - low) * 0.12, Math.abs(high) * 1e-3, 1e-6);
  return [low - pad, high + pad];
}

function drawChart(chart) {
  const series = chart.series;
  const points = series.points;
  const limits = series.limits;
  describeLimits(chart);
  listBreaks(chart);
  listSamples(chart);
  if (chart.plot) { chart.plot.destroy(); chart.plot = null; }
  chart.holder.replaceChildren();
  if (!points.seq.length) {
    chart.holder.appendChild(inspectd.el("p", `No frame in this range carries ${series.metric}.`, "muted"));
    return;
  }
  const flagged = new Map();  // index -> rule ids
  for (const found of series.breaks) for (const index of found.indices) {
    if (!flagged.has(index)) flagged.set(index, []);
    flagged.get(index).push(found.rule);
  }
  const width = Math.max(360, chart.holder.clientWidth || chart.card.clientWidth - 24);
  const [yLow, yHigh] = yRange(series);
  const flat = value => points.seq.map(() => value);
  const data = [points.seq, points.value];
  const lines = [{ label: series.metric, stroke: COLORS.value, width: 1.5, points: { show: true, size: 5, fill: COLORS.value } }];
  if (limits) {
    data.push(flat(limits.centre), flat(limits.ucl), flat(limits.lcl));
    lines.push({ label: "centre", stroke: COLORS.centre, width: 1.5, dash: [8, 4], points: { show: false } },
      { label: "UCL", stroke: COLORS.limit, width: 1.5, dash: [6, 4], points: { show: false } },
      { label: "LCL", stroke: COLORS.limit, width: 1.5, dash: [6, 4], points: { show: false } });
  }
  const options = {
    width, height: 300,
    legend: { show: false },
    cursor: { drag: { x: true, y: false, setScale: false }, points: { size: 9 } },
    scales: { x: { time: false, range: () => [points.seq[0] - 0.5, points.seq[points.seq.length - 1] + 0.5] },
      y: { range: () => [yLow, yHigh] } },
    axes: [
      { values: (u, splits) => splits.map(seq => xLabel(points, seq)), size: 48, space: 90 },
      { values: (u, splits) => splits.map(v => number(v, "1", 3)), size: 64, label: unitText(series.unit) || series.metric },
    ],
    series: [{ label: "seq" }, ...lines],
    hooks: {
      drawClear: [u => drawBands(u, series)],
      draw: [u => drawMarks(u, series, flagged)],
      setCursor: [u => describePoint(chart, u.cursor.idx)],
      setSelect: [u => pickBaseline(u, points)],
    },
  };
  chart.plot = new uPlot(options, data, chart.holder);
  chart.plot.over.addEventListener("mousedown", event => { chart.downAt = event.clientX; });
  chart.plot.over.addEventListener("click", event => {
    if (chart.downAt !== undefined && Math.abs(event.clientX - chart.downAt) > 4) return;  // that was a drag
    const index = chart.plot.cursor.idx;
    if (index !== null && index !== undefined) showFrame(chart.metric, points.seq[index]);
  });
}

function xLabel(points, seq) {
  const index = nearestIndex(points.seq, seq);
  if (index < 0) return "";
  return `seq ${Math.round(seq)}\n${timeOf(points.time[index])}`;
}

function describeLimits(chart) {
  const series = chart.series;
  const limits = series.limits;
  const line = chart.limitsLine;
  line.replaceChildren();
  if (!limits) {
    line.appendChild(inspectd.el("span", `No control limits: ${series.limits_problem || "no baseline"}`, "message error"));
    return;
  }
  const add = (label, value) => { line.appendChild(document.createTextNode(`${label} `)); line.appendChild(inspectd.el("b", value)); line.appendChild(document.createTextNode("  ·  ")); };
  add("centre", number(limits.centre, series.unit, 4));
  add("σ", number(limits.sigma, series.unit, 3));
  add("UCL", number(limits.ucl, series.unit, 4));
  add("LCL", number(limits.lcl, series.unit, 4));
  const source = { chosen: "chosen", saved: "saved for alarms", provisional: "provisional: the first 20 frames shown" }[limits.source];
  line.appendChild(document.createTextNode(`baseline seq ${limits.baseline_first_seq}–${limits.baseline_last_seq} (${limits.n} frames, ${source})`));
  if (series.spec.length) {
    const specs = series.spec.map(s => `${s.op} ${number(s.limit, series.unit)}`).join(", ");
    line.appendChild(document.createTextNode(`  ·  verdict rule ${specs}`));
  }
}

function listBreaks(chart) {
  const series = chart.series;
  const box = chart.breaks;
  box.replaceChildren();
  if (!series.limits) return;
  const rules = series.rule_set === "nelson" ? "Nelson 1–8" : "Western Electric 1–4";
  if (!series.breaks.length) { box.appendChild(inspectd.el("span", `No rule break (${rules}) in these frames.`, "none")); return; }
  box.appendChild(inspectd.el("span", `${series.breaks.length} rule break${series.breaks.length > 1 ? "s" : ""} (${rules}):`, "muted"));
  for (const found of series.breaks) {
    const arrow = { high: " ↑", low: " ↓", rising: " ↗", falling: " ↘" }[found.direction] || "";
    const button = inspectd.el("button", `${found.rule}${arrow} ${found.name} · seq ${found.first_seq}–${found.last_seq}`);
    button.type = "button";
    button.title = found.name;
    button.dataset.rule = found.rule;
    button.addEventListener("click", () => showFrame(series.metric, found.last_seq));
    box.appendChild(button);
  }
}

function listSamples(chart) {
  const series = chart.series;
  const box = chart.samples;
  box.replaceChildren(inspectd.el("summary", `Part means over their fields (ASTM E2109, 95 % CI): ${series.samples.length} parts`));
  if (!series.samples.length) return;
  const table = inspectd.el("table");
  const head = inspectd.el("tr");
  for (const text of ["part", "fields", "mean", "95 % CI", "rel. accuracy", "seq"]) head.appendChild(inspectd.el("th", text));
  table.appendChild(head);
  for (const sample of [...series.samples].reverse().slice(0, 200)) {
    const row = inspectd.el("tr");
    row.appendChild(inspectd.el("td", sample.part_id));
    row.appendChild(inspectd.el("td", sample.n, "num"));
    row.appendChild(inspectd.el("td", number(sample.mean, series.unit, 4), "num"));
    row.appendChild(inspectd.el("td", sample.ci95_low === null ? "one field" : `${number(sample.ci95_low, "1", 4)} – ${number(sample.ci95_high, "1", 4)}`, "num"));
    row.appendChild(inspectd.el("td", sample.relative_accuracy_pct === null ? "–" : `${inspectd.fmt(sample.relative_accuracy_pct, 1)} %`, "num"));
    row.appendChild(inspectd.el("td", `${sample.seqs[0]}–${sample.seqs[sample.seqs.length - 1]}`, "num"));
    table.appendChild(row);
  }
  box.appendChild(table);
}

// ---- canvas drawing (uPlot hooks) -----------------------------------------------------------

function drawBands(u, series) {
  const ctx = u.ctx;
  const { left, top, width, height } = u.bbox;
  const limits = series.limits;
  ctx.save();
  ctx.beginPath(); ctx.rect(left, top, width, height); ctx.clip();
  if (limits) {
    const y = value => u.valToPos(value, "y", true);
    const band = (from, to, color) => { ctx.fillStyle = color; ctx.fillRect(left, y(to), width, y(from) - y(to)); };
    band(limits.plus_2sigma, limits.ucl, COLORS.zoneA); band(limits.lcl, limits.minus_2sigma, COLORS.zoneA);
    band(limits.plus_1sigma, limits.plus_2sigma, COLORS.zoneB); band(limits.minus_2sigma, limits.minus_1sigma, COLORS.zoneB);
    band(limits.minus_1sigma, limits.plus_1sigma, COLORS.zoneC);
    if (limits.baseline_first_seq !== undefined) {
      const x0 = u.valToPos(limits.baseline_first_seq - 0.5, "x", true), x1 = u.valToPos(limits.baseline_last_seq + 0.5, "x", true);
      const from = Math.max(left, x0), to = Math.min(left + width, x1);
      if (to > from) {
        ctx.fillStyle = COLORS.baseline; ctx.fillRect(from, top, to - from, height);
        ctx.fillStyle = "#1a56b0"; ctx.font = `${12 * devicePixelRatio}px system-ui, sans-serif`; ctx.textBaseline = "bottom";
        ctx.fillText("baseline", from + 4 * devicePixelRatio, top + height - 3 * devicePixelRatio);
      }
    }
  }
  ctx.restore();
}

function drawMarks(u, series, flagged) {
  const ctx = u.ctx;
  const ratio = devicePixelRatio;
  const { left, top, width, height } = u.bbox;
  const points = series.points;
  const x = seq => u.valToPos(seq, "x", true), y = value => u.valToPos(value, "y", true);
  ctx.save();
  ctx.setLineDash([]);  // uPlot leaves the last series' dash set
  ctx.beginPath(); ctx.rect(left, top, width, height); ctx.clip();
  const limits = series.limits;
  ctx.font = `${11 * ratio}px system-ui, sans-serif`;
  if (limits) {  // line labels at the right edge
    ctx.textAlign = "right"; ctx.textBaseline = "bottom";
    for (const [value, text, color] of [[limits.ucl, "UCL", COLORS.limit], [limits.centre, "CL", COLORS.centre], [limits.lcl, "LCL", COLORS.limit]]) {
      ctx.fillStyle = color; ctx.fillText(text, left + width - 4 * ratio, y(value) - 2 * ratio);
    }
  }
  for (const spec of series.spec) {  // the verdict rule's limit
    const yy = y(spec.limit);
    if (yy < top || yy > top + height) {  // off the chart: say where, at that edge
      ctx.fillStyle = COLORS.spec; ctx.textAlign = "left";
      ctx.textBaseline = yy < top ? "top" : "bottom";
      ctx.fillText(`verdict rule ${spec.op} ${spec.limit} ${yy < top ? "↑ above" : "↓ below"} the chart`,
        left + 4 * ratio, yy < top ? top + 3 * ratio : top + height - 3 * ratio);
      continue;
    }
    ctx.strokeStyle = COLORS.spec; ctx.lineWidth = 2 * ratio; ctx.setLineDash([2 * ratio, 3 * ratio]);
    ctx.beginPath(); ctx.moveTo(left, yy); ctx.lineTo(left + width, yy); ctx.stroke(); ctx.setLineDash([]);
    ctx.fillStyle = COLORS.spec; ctx.textAlign = "left"; ctx.textBaseline = "bottom";
    ctx.fillText(`verdict rule ${spec.op} ${spec.limit}`, left + 4 * ratio, yy - 2 * ratio);
  }
  for (const sample of series.samples) {  // part means with their 95 % CI
    const xx = x(sample.x), yy = y(sample.mean);
    ctx.strokeStyle = COLORS.sample; ctx.fillStyle = COLORS.sample; ctx.lineWidth = 1.2 * ratio;
    if (sample.ci95_low !== null) {
      const a = y(sample.ci95_low), b = y(sample.ci95_high), cap = 3 * ratio;
      ctx.beginPath(); ctx.moveTo(xx, a); ctx.lineTo(xx, b);
      ctx.moveTo(xx - cap, a); ctx.lineTo(xx + cap, a); ctx.moveTo(xx - cap, b); ctx.lineTo(xx + cap, b); ctx.stroke();
    }
    const r = 4 * ratio;
    ctx.beginPath(); ctx.moveTo(xx, yy - r); ctx.lineTo(xx + r, yy); ctx.lineTo(xx, yy + r); ctx.lineTo(xx - r, yy); ctx.closePath(); ctx.fill();
  }
  ctx.strokeStyle = COLORS.limit; ctx.lineWidth = 2 * ratio;
  for (const index of flagged.keys()) {  // every point in a break: a red ring
    ctx.beginPath(); ctx.arc(x(points.seq[index]), y(points.value[index]), 6.5 * ratio, 0, 2 * Math.PI); ctx.stroke();
  }
  // Each break: a bracket over its frames with the rule id, stacked in rows so labels never overlap.
  const rows = [];
  ctx.textAlign = "left"; ctx.textBaseline = "top"; ctx.font = `bold ${11 * ratio}px system-ui, sans-serif`;
  for (const found of series.breaks) {
    const x0 = x(points.seq[found.indices[0]]) - 5 * ratio, x1 = x(points.seq[found.indices[found.indices.length - 1]]) + 5 * ratio;
    const label = found.rule;
    const labelEnd = x0 + ctx.measureText(label).width + 8 * ratio;
    let row = rows.findIndex(end => end < x0);
    if (row < 0) { rows.push(0); row = rows.length - 1; }
    rows[row] = Math.max(x1, labelEnd);
    const yy = top + (4 + row * 15) * ratio;
    ctx.strokeStyle = COLORS.limit; ctx.lineWidth = 1.5 * ratio;
    ctx.beginPath(); ctx.moveTo(x0, yy + 10 * ratio); ctx.lineTo(x0, yy + 5 * ratio); ctx.lineTo(x1, yy + 5 * ratio); ctx.lineTo(x1, yy + 10 * ratio); ctx.stroke();
    ctx.fillStyle = "#fff"; ctx.fillRect(x0 + 2 * ratio, yy - 1 * ratio, ctx.measureText(label).width + 4 * ratio, 12 * ratio);
    ctx.fillStyle = COLORS.limit; ctx.fillText(label, x0 + 4 * ratio, yy - 1 * ratio);
  }
  ctx.restore();
}

function describePoint(chart, index) {
  const points = chart.series && chart.series.points;
  if (!points || index === null || index === undefined || index < 0 || index >= points.seq.length) { chart.hover.textContent = "\u00a0"; return; }
  const part = points.part_id[index] ? ` · part ${points.part_id[index]}` : "";
  const rules = chart.series.breaks.filter(b => b.indices.includes(index)).map(b => b.rule);
  chart.hover.textContent = `seq ${points.seq[index]} · ${timeOf(points.time[index], true)}${part} · ` +
    `${number(points.value[index], chart.series.unit, 4)} · ${points.verdict[index]}` +
    `${rules.length ? ` · breaks ${rules.join(", ")}` : ""} — click to see the frame`;
}

function pickBaseline(u, points) {
  if (u.select.width < 6) return;
  // The frames whose points lie under the selection, each edge counting the frame within half a step of it.
  const from = u.posToVal(u.select.left, "x"), to = u.posToVal(u.select.left + u.select.width, "x");
  const first = points.seq[nearestIndex(points.seq, from)], last = points.seq[nearestIndex(points.seq, to)];
  const inside = points.seq.filter(seq => seq >= first && seq <= last);
  u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
  if (inside.length < 2) { notice("A baseline needs at least 2 frames: drag across more points.", "info"); return; }
  notice(null);
  setBaseline("chosen", inside[0], inside[inside.length - 1]);
  refresh();
}

// ---- the frame panel ------------------------------------------------------------------------

function showFrame(metric, seq) {
  const panel = document.getElementById("frame-panel");
  const chart = trends.charts.get(metric);
  const points = chart && chart.series ? chart.series.points : null;
  const index = points ? points.seq.indexOf(seq) : -1;
  const key = `seq-${seq}`;
  const children = [inspectd.el("h2", `Frame seq ${seq}`)];
  const image = inspectd.el("img");
  image.alt = `overlay of frame seq ${seq}`;
  image.src = `/api/frames/${key}/overlay.png`;
  const missing = inspectd.el("p", "", "muted");
  image.addEventListener("error", () => { image.remove(); missing.textContent = "No overlay kept for this frame (the frame store keeps recent frames)."; });
  children.push(image, missing);
  if (index >= 0) {
    const table = inspectd.el("table");
    const row = (label, value) => { const tr = inspectd.el("tr"); tr.appendChild(inspectd.el("td", label)); tr.appendChild(inspectd.el("td", value)); table.appendChild(tr); };
    row("time", timeOf(points.time[index], true));
    row("part", points.part_id[index] || "–");
    row("verdict", points.verdict[index]);
    row(metric, number(points.value[index], chart.series.unit, 4));
    const rules = chart.series.breaks.filter(b => b.indices.includes(index));
    if (rules.length) row("rule breaks", rules.map(b => `${b.rule} (${b.name})`).join("; "));
    children.push(table);
  }
  const links = inspectd.el("p");
  const review = inspectd.el("a", "Open in Review");
  review.href = `/review?key=${encodeURIComponent(key)}`;
  review.id = "open-review";
  const overlay = inspectd.el("a", "overlay image");
  overlay.href = `/api/frames/${key}/overlay.png`;
  overlay.target = "_blank";
  links.append(review, document.createTextNode(" · "), overlay);
  children.push(links);
  panel.replaceChildren(...children);
}

// ---- saving the alarm settings ---------------------------------------------------------------

async function saveSettings() {
  const from = readSeq("baseline-from"), to = readSeq("baseline-to");
  if (!from || !to || Number.isNaN(from) || Number.isNaN(to)) { notice("Pick a baseline first: drag across a chart or type its first and last seq."); return; }
  const body = { metrics: [...trends.charts.keys()], rule_set: document.getElementById("rule-set").value,
    baseline_from: Math.min(from, to), baseline_to: Math.max(from, to) };
  try {
    trends.settings = await inspectd.json("/api/trends/settings", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  } catch (error) {
    notice(`Not saved: ${error.message}`);
    return;
  }
  const saved = trends.settings.settings;
  notice(`Saved: ${Object.keys(saved.metrics).join(", ") || "nothing"} watched with baseline seq ${saved.baseline.first_seq}–${saved.baseline.last_seq}. ` +
    (trends.settings.publishing ? "The daemon raises alarms for the frames that come from now on." : "Alarms are shown on this page only (no daemon)."), "info");
  setBaseline("saved", saved.baseline.first_seq, saved.baseline.last_seq);
  await refresh();
}

// ---- wiring -------------------------------------------------------------------------------

document.getElementById("controls").addEventListener("submit", event => {
  event.preventDefault();
  const from = readSeq("baseline-from"), to = readSeq("baseline-to");
  if (from && to && (trends.baseline.from !== from || trends.baseline.to !== to)) setBaseline("chosen", from, to);
  notice(null);
  refresh();
});
document.getElementById("rule-set").addEventListener("change", () => refresh());
document.getElementById("follow").addEventListener("change", () => refresh());
document.getElementById("add-chart").addEventListener("click", () => { const metric = document.getElementById("add-metric").value; if (metric) { addChart(metric); loadChart(metric); } });
document.getElementById("use-saved").addEventListener("click", () => { const s = trends.settings.settings; setBaseline("saved", s.baseline.first_seq, s.baseline.last_seq); refresh(); });
document.getElementById("save").addEventListener("click", saveSettings);
let resizeTimer = null;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => { for (const chart of trends.charts.values()) if (chart.series) drawChart(chart); }, 200); });
start();
