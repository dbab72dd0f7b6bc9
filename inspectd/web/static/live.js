// Live page: the first paint from /api/live, then verdicts, frames and status pushed over /api/live/events.
// Every string from the server goes through textContent (inspectd.el), never innerHTML.
"use strict";
inspectd.nav("live");

const KEY_METRICS = [
  ["porosity_pct", "porosity", 2],
  ["unmelted_fraction_pct", "unmelted fraction", 1],
  ["melted_fraction_pct", "melted fraction", 1],
  ["pore_count", "pores", 0],
  ["unmelted_count", "unmelted particles", 0],
  ["pore_mean_eq_diameter_um", "pore mean diameter", 2],
  ["unmelted_mean_eq_diameter_um", "particle mean diameter", 2],
];
const VERDICTS = ["PASS", "FAIL", "ERROR", "NO_INSPECTION"];

const live = { mode: null, keep: 50, sources: new Map(), stream: null, retry: null };

function timeOf(iso) {
  const moment = iso ? new Date(iso) : null;
  return moment && !isNaN(moment) ? moment.toLocaleTimeString() : "–";
}

function fileName(source) {
  const text = String(source || "");
  return text.split("/").pop() || text;
}

function setConnection(text, kind) {
  const node = document.getElementById("connection");
  node.textContent = text;
  node.className = kind;
}

// ---- first paint and the stream --------------------------------------------------------

async function load() {
  clearTimeout(live.retry);
  if (live.stream) { live.stream.close(); live.stream = null; }
  let snapshot;
  try {
    snapshot = await inspectd.json("/api/live");
  } catch (error) {
    inspectd.showMessage(document.getElementById("notice"), `Cannot load the live view: ${error.message}`);
    setConnection("disconnected, retrying", "down");
    live.retry = setTimeout(load, 5000);
    return;
  }
  live.mode = snapshot.mode;
  live.keep = snapshot.live_frames;
  live.sources.clear();
  document.getElementById("sources").replaceChildren();
  const notice = document.getElementById("notice");
  notice.replaceChildren();
  if (snapshot.mode === "offline") {
    notice.appendChild(inspectd.el("div", "Offline: this UI runs over the journal of a state dir without a daemon. " +
      "Verdicts appear here as another process journals them; source and pipeline health need the running daemon " +
      "(inspectd run --http).", "message info"));
  }
  if (snapshot.journal_error) notice.appendChild(inspectd.el("div", snapshot.journal_error, "message info"));
  for (const source of snapshot.sources) {
    const entry = sourceEntry(source.id);
    entry.latest = source.latest;
    entry.recent = source.recent;
    render(entry);
  }
  renderStatus(snapshot.status);
  connect(snapshot.event_id);
}

function connect(after) {
  const stream = new EventSource(`/api/live/events?after=${encodeURIComponent(after)}`);
  live.stream = stream;
  stream.addEventListener("verdict", (event) => onVerdict(JSON.parse(event.data)));
  stream.addEventListener("frame", (event) => onFrame(JSON.parse(event.data)));
  stream.addEventListener("status", (event) => renderStatus(JSON.parse(event.data)));
  stream.addEventListener("resync", () => load());
  stream.onopen = () => setConnection("live", "live");
  stream.onerror = () => {
    if (stream.readyState === EventSource.CLOSED) {  // refused (too many streams, logged out): start over later
      setConnection("disconnected, retrying", "down");
      live.retry = setTimeout(load, 5000);
    } else {
      setConnection("reconnecting…", "down");
    }
  };
}

function onVerdict(event) {
  const message = event.message;
  const entry = sourceEntry(event.source_id);
  if (entry.recent.some((item) => item.seq === message.seq && item.source === message.source)) return;
  entry.recent.unshift({ seq: message.seq, verdict: message.verdict, source: message.source,
                         publish_time: message.publish_time, frame: event.frame });
  entry.recent.length = Math.min(entry.recent.length, live.keep);
  entry.latest = message;
  render(entry);
}

function onFrame(event) {
  const entry = sourceEntry(event.source_id);
  const item = entry.recent.find((candidate) => candidate.seq === event.seq);
  if (item) item.frame = event.key;
  render(entry);
}

// ---- one card per source ---------------------------------------------------------------

function sourceEntry(id) {
  let entry = live.sources.get(id);
  if (!entry) {
    entry = { id, latest: null, recent: [], pinned: null, pinnedMessage: null,
              card: inspectd.el("section", null, "card source-card") };
    entry.card.dataset.source = id;
    document.getElementById("sources").appendChild(entry.card);
    live.sources.set(id, entry);
  }
  return entry;
}

async function pin(entry, seq) {
  if (seq === null || (entry.latest && seq === entry.latest.seq)) {
    entry.pinned = null; entry.pinnedMessage = null; render(entry); return;
  }
  entry.pinned = seq;
  try {
    const found = await inspectd.json(`/api/verdicts?since=${seq - 1}&limit=1`);
    entry.pinnedMessage = found.length && found[0].seq === seq ? found[0] : null;
  } catch (error) {
    entry.pinnedMessage = null;
  }
  render(entry);
}

function render(entry) {
  const message = entry.pinned !== null && entry.pinnedMessage ? entry.pinnedMessage : entry.latest;
  const card = entry.card;
  card.replaceChildren();
  const title = inspectd.el("h2");
  title.appendChild(inspectd.el("span", `Source ${entry.id}`));
  if (!message) {
    card.appendChild(title);
    card.appendChild(inspectd.el("p", "No verdict from this source yet.", "muted"));
    return;
  }
  title.appendChild(inspectd.el("span", message.verdict, `badge ${message.verdict}`));
  title.appendChild(inspectd.el("span", `seq ${message.seq} · ${timeOf(message.publish_time)} · ${fileName(message.source)}`,
                                "muted"));
  if (entry.pinned !== null) {
    const back = inspectd.el("button", "back to live");
    back.addEventListener("click", () => pin(entry, null));
    title.appendChild(back);
  }
  card.appendChild(title);
  const body = inspectd.el("div", null, "source-body");
  body.appendChild(frameBox(entry, message));
  body.appendChild(factsBox(message));
  card.appendChild(body);
  card.appendChild(strip(entry, message));
}

function frameBox(entry, message) {
  const box = inspectd.el("div", null, "frame-box");
  const item = entry.recent.find((candidate) => candidate.seq === message.seq);
  const key = item ? item.frame : null;
  let shown = key, caption = `overlay · ${key}`;
  if (!key && entry.pinned === null && live.mode === "daemon" && message.image) {
    // The daemon renders the overlay just after the verdict: the newest picture stays until it comes.
    const older = entry.recent.find((candidate) => candidate.frame);
    if (older) { shown = older.frame; caption = `${older.frame} · picture of seq ${message.seq} follows`; }
  }
  if (shown) {
    const img = document.createElement("img");
    img.src = `/api/frames/${encodeURIComponent(shown)}/overlay.png`;
    img.alt = `overlay of ${shown}`;
    img.addEventListener("error", () => box.replaceChildren(inspectd.el("div", "This frame's picture is no longer kept.",
                                                                         "placeholder")));
    box.appendChild(img);
    box.appendChild(inspectd.el("span", caption, "caption"));
  } else if (!message.image) {
    box.appendChild(inspectd.el("div", "No picture: the frame could not be read.", "placeholder"));
  } else {
    box.appendChild(inspectd.el("div", live.mode === "daemon" ? "Picture follows…" :
      "This frame's picture is not kept (the UI keeps the newest frames it saw, within http.overlay_cache_mb).",
      "placeholder"));
  }
  return box;
}

function factsBox(message) {
  const box = inspectd.el("div");
  const failed = new Set((message.failed_rules || []).map((rule) => rule.metric));
  const table = inspectd.el("table", null, "facts");
  const row = (label, value, cls) => {
    const tr = inspectd.el("tr");
    tr.appendChild(inspectd.el("td", label));
    tr.appendChild(inspectd.el("td", value, cls));
    table.appendChild(tr);
  };
  const parameters = message.parameters || {};
  for (const [name, label, digits] of KEY_METRICS) {
    const parameter = parameters[name];
    if (!parameter) continue;
    const unit = parameter.unit && !["1", "count"].includes(parameter.unit) ? ` ${parameter.unit.replace("um", "µm")}` : "";
    row(label, `${inspectd.fmt(parameter.value, digits)}${unit}`, failed.has(name) ? "num failed" : "num");
  }
  row("confidence", message.confidence === null || message.confidence === undefined ? "–"
    : inspectd.fmt(message.confidence, 2), "num");
  const ood = message.out_of_distribution;
  row("out of distribution", ood === true ? "YES" : ood === false ? "no" : "–", ood ? "ood" : "");
  if (message.engine) row("engine", `${message.engine.name} on ${message.engine.backend}`);
  if (message.part_id) row("part", message.part_id);
  box.appendChild(table);
  if ((message.failed_rules || []).length) {
    box.appendChild(inspectd.el("div", "Failed rules", "muted"));
    const list = inspectd.el("ul", null, "rules");
    for (const rule of message.failed_rules) {
      list.appendChild(inspectd.el("li", `${rule.metric} ${inspectd.fmt(rule.value, 2)} (must be ${rule.op} ${rule.limit})`));
    }
    box.appendChild(list);
  }
  if (message.reason) box.appendChild(inspectd.el("p", message.reason, "reason"));
  const files = inspectd.el("div", null, "files muted");
  const item = message.seq !== undefined ? `seq-${message.seq}` : null;
  if (item && message.image) {
    files.appendChild(inspectd.el("span", "files: "));
    for (const name of ["overlay.png", "enhanced.png", "mask.png", "image.png", "meta.json"]) {
      const a = inspectd.el("a", name.split(".")[0]);
      a.href = `/api/frames/${item}/${name}`;
      a.target = "_blank";
      files.appendChild(a);
    }
    const review = inspectd.el("a", "review and label", "review");
    review.href = `/review?key=${item}`;
    files.appendChild(review);
    box.appendChild(files);
  }
  return box;
}

function strip(entry, message) {
  const container = inspectd.el("div", null, "strip");
  container.title = "recent verdicts, newest first: click one to show it";
  for (const item of entry.recent) {
    const chip = inspectd.el("button", String(item.seq), item.verdict + (item.seq === message.seq ? " shown" : ""));
    chip.title = `${item.verdict} · ${fileName(item.source)} · ${timeOf(item.publish_time)}`;
    chip.addEventListener("click", () => pin(entry, item.seq));
    container.appendChild(chip);
  }
  return container;
}

// ---- counters and health ---------------------------------------------------------------

function renderStatus(status) {
  if (!status) return;
  const counters = document.getElementById("counters");
  counters.replaceChildren(inspectd.el("h2", "Verdicts"));
  const table = inspectd.el("table");
  const head = inspectd.el("tr");
  const since = status.shift_start ? new Date(status.shift_start) : null;
  const shiftLabel = since && !isNaN(since) ? `this shift (since ${since.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })})` : "this shift";
  for (const label of ["", "last hour", shiftLabel]) head.appendChild(inspectd.el("th", label, label ? "num" : ""));
  table.appendChild(head);
  const hour = status.counts.last_hour || {}, shift = status.counts.shift || {};
  for (const verdict of VERDICTS) {
    if (verdict === "NO_INSPECTION" && !hour[verdict] && !shift[verdict]) continue;
    const tr = inspectd.el("tr");
    const label = inspectd.el("td");
    label.appendChild(inspectd.el("span", verdict, `badge ${verdict}`));
    tr.appendChild(label);
    tr.appendChild(inspectd.el("td", hour[verdict] || 0, "num"));
    tr.appendChild(inspectd.el("td", shift[verdict] || 0, "num"));
    table.appendChild(tr);
  }
  counters.appendChild(table);
  if (status.journal_error) counters.appendChild(inspectd.el("p", status.journal_error, "muted"));

  const health = document.getElementById("health");
  health.replaceChildren(inspectd.el("h2", "Station health"));
  if (!status.health) {
    health.appendChild(inspectd.el("p", "No daemon in this process (inspectd ui): source and pipeline health are " +
      "shown when the UI is served by the running daemon (inspectd run --http).", "muted"));
    return;
  }
  const facts = status.health.facts;
  health.appendChild(inspectd.el("div", status.health.healthy ? "healthy" : `NOT healthy: ${status.health.problems.join("; ")}`,
                                 `health-line ${status.health.healthy ? "ok" : "bad"}`));
  for (const line of status.health.lines.slice(1)) {
    if (line.startsWith("source ")) continue;  // in the table below
    health.appendChild(inspectd.el("div", line, "muted"));
  }
  const sources = inspectd.el("table");
  const header = inspectd.el("tr");
  for (const label of ["source", "kind", "state", "done", "quarantined", "dropped", "last error"]) {
    header.appendChild(inspectd.el("th", label));
  }
  sources.appendChild(header);
  for (const source of facts.sources || []) {
    const stats = source.stats || {};
    const tr = inspectd.el("tr");
    for (const value of [source.id, source.kind, source.state, stats.done ?? stats.items ?? "–",
                         stats.quarantined ?? "–", stats.drops ?? 0, stats.last_error || ""]) {
      tr.appendChild(inspectd.el("td", value));
    }
    sources.appendChild(tr);
  }
  health.appendChild(sources);
  if (status.health.dropped_frames) {
    health.appendChild(inspectd.el("p", `${status.health.dropped_frames} frame picture(s) skipped in bursts ` +
      "(their verdicts are all here)", "muted"));
  }
}

load();
