// Shared by every page: the navigation bar, JSON fetches that surface errors, text-only DOM writes.
"use strict";
const inspectd = {
  // Navigation bar at the top of <body>; `active` names the current page.
  nav(active) {
    const header = document.createElement("header");
    header.className = "nav";
    for (const [path, label] of [["/live", "Live"], ["/trends", "Trends"], ["/analyse", "Analyse"], ["/review", "Review"]]) {
      const a = document.createElement("a");
      a.href = path; a.textContent = label;
      if (path === "/" + active) a.className = "active";
      header.appendChild(a);
    }
    const station = document.createElement("span");
    station.className = "station"; station.id = "station";
    header.appendChild(station);
    document.body.prepend(header);
    fetch("/healthz").then(r => r.json()).then(h => { station.textContent = `station ${h.station} · ${h.mode}`; }).catch(() => {});
  },
  // fetch + JSON; a non-2xx answer throws an Error carrying the server's one-line reason.
  async json(url, options = {}) {
    const response = await fetch(url, { credentials: "same-origin", ...options });
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
    return body;
  },
  // Element with text content only (never innerHTML: every string from the server is untrusted).
  el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  },
  showMessage(container, text, kind = "error") {
    container.replaceChildren(inspectd.el("div", text, `message ${kind}`));
  },
  fmt(value, digits = 2) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
  },
};
