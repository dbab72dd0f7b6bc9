// Analyse page: upload micrographs, show each field's overlay, verdict, metrics and regions, offer the downloads.
// Every string from the server is written as text (inspectd.el), never as HTML.
"use strict";
(() => {
  const HEADLINE = ["melted_fraction_pct", "unmelted_fraction_pct", "porosity_pct"];
  const REGION_COLUMNS = [
    ["label", "label", 0], ["class_name", "class", null], ["area_px", "area px", 0], ["area_um2", "area µm²", 1],
    ["equivalent_diameter_um", "eq. diam. µm", 2], ["aspect_ratio", "aspect", 2], ["circularity", "circularity", 3],
    ["solidity", "solidity", 3], ["centroid_x", "x px", 1], ["centroid_y", "y px", 1],
  ];
  const form = document.getElementById("upload-form");
  const filesInput = document.getElementById("files");
  const engineSelect = document.getElementById("engine");
  const button = document.getElementById("analyse-button");
  const status = document.getElementById("status");
  const message = document.getElementById("message");
  const result = document.getElementById("result");

  inspectd.nav("analyse");

  // A number with as many decimals as its size needs (fractions in %, areas in µm², ratios).
  function number(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return "–";
    const size = Math.abs(value);
    if (Number.isInteger(value)) return String(value);
    return inspectd.fmt(value, size >= 1000 ? 0 : size >= 10 ? 2 : size >= 0.01 ? 3 : 5);
  }

  function megabytes(bytes) {
    return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(1)} GB` : `${Math.round(bytes / 1e6)} MB`;
  }

  async function showLimits() {
    try {
      const limits = await inspectd.json("/api/analyze/limits");
      engineSelect.replaceChildren(...limits.engines.map((name) => {
        const option = inspectd.el("option", name);
        option.value = name;
        option.selected = name === limits.default_engine;
        return option;
      }));
      document.getElementById("limits").textContent =
        `PNG, TIFF (8/16-bit; each page of a multi-page TIFF is one field), BMP, JPEG · up to ${limits.max_files} ` +
        `files of ${megabytes(limits.max_file_bytes)} and ${Math.round(limits.max_pixels / 1e6)} megapixels each.`;
    } catch (error) {
      inspectd.showMessage(message, error.message);
    }
  }

  function table(head, rows, numeric) {
    const t = inspectd.el("table");
    const headRow = inspectd.el("tr");
    head.forEach((label, i) => headRow.appendChild(inspectd.el("th", label, numeric[i] ? "num" : "")));
    t.appendChild(inspectd.el("thead")).appendChild(headRow);
    const body = t.appendChild(inspectd.el("tbody"));
    for (const row of rows) {
      const tr = body.appendChild(inspectd.el("tr"));
      row.forEach((cell, i) => tr.appendChild(inspectd.el("td", cell, numeric[i] ? "num" : "")));
    }
    return t;
  }

  function scroll(kind, content) {
    const box = inspectd.el("div", null, `scroll ${kind}`);
    box.appendChild(content);
    return box;
  }

  function metricsTable(metrics) {
    const names = [...HEADLINE.filter((n) => n in metrics), ...Object.keys(metrics).filter((n) => !HEADLINE.includes(n))];
    return table(["metric", "value"], names.map((n) => [n, number(metrics[n])]), [false, true]);
  }

  function regionsTable(regions) {
    return table(REGION_COLUMNS.map((c) => c[1]),
      regions.map((r) => REGION_COLUMNS.map(([key, , digits]) => digits === null ? r[key] : number(r[key]))),
      REGION_COLUMNS.map((c) => c[2] !== null));
  }

  function fieldCard(field) {
    const record = field.record;
    const card = inspectd.el("section", null, "card field");
    card.dataset.key = field.key;
    const head = card.appendChild(inspectd.el("div", null, "field-head"));
    head.appendChild(inspectd.el("span", record.verdict, `badge ${record.verdict}`));
    const pages = field.stem.match(/_field\d+$/) ? ` · field ${field.field_index}` : "";
    head.appendChild(inspectd.el("h2", `${field.file}${pages}`));
    const facts = [`${record.image.width ?? "–"}×${record.image.height ?? "–"} px, ${record.image.bit_depth ?? "–"}-bit`,
                   `${field.regions_total} regions`];
    if (record.confidence !== null) facts.push(`confidence ${inspectd.fmt(record.confidence, 2)}`);
    if (record.out_of_distribution) facts.push("out of distribution");
    head.appendChild(inspectd.el("span", facts.join(" · "), "facts muted"));
    const review = inspectd.el("a", "review and label", "review");
    review.href = field.review;
    head.appendChild(review);

    if (record.reason) card.appendChild(inspectd.el("p", record.reason, "reason message error"));
    if (record.failed_rules.length) {
      const rules = card.appendChild(inspectd.el("ul", null, "rules"));
      for (const rule of record.failed_rules) {
        rules.appendChild(inspectd.el("li", `${rule.metric} ${rule.op} ${rule.limit} failed: got ${number(rule.value)}`));
      }
    }
    for (const warning of record.warnings) card.appendChild(inspectd.el("p", warning, "message info"));

    const body = card.appendChild(inspectd.el("div", null, "field-body"));
    const left = body.appendChild(inspectd.el("div"));
    if (field.overlay) {
      const img = inspectd.el("img", null, "overlay");
      img.src = field.overlay;
      img.alt = `overlay of ${field.file}: unmelted particles outlined green, pores red`;
      left.appendChild(img);
    } else {
      left.appendChild(inspectd.el("p", "No overlay: this field was not segmented.", "muted"));
    }
    const right = body.appendChild(inspectd.el("div"));
    right.appendChild(inspectd.el("h3", "Metrics"));
    right.appendChild(scroll("metrics", metricsTable(record.metrics)));

    if (field.regions_total) {
      card.appendChild(inspectd.el("h3", "Regions"));
      const shown = field.regions.length < field.regions_total
        ? `the first ${field.regions.length} of ${field.regions_total} regions; all of them are in the downloads`
        : `${field.regions_total} regions (µm from um_per_px ${record.um_per_px})`;
      card.appendChild(inspectd.el("p", shown, "muted hint"));
      card.appendChild(scroll("regions", regionsTable(field.regions)));
    }
    return card;
  }

  function summaryCard(answer) {
    const card = inspectd.el("section", null, "card summary-card");
    const line = card.appendChild(inspectd.el("div", null, "summary"));
    const counts = {};
    for (const f of answer.fields) counts[f.record.verdict] = (counts[f.record.verdict] || 0) + 1;
    line.appendChild(inspectd.el("strong", `${answer.fields.length} field${answer.fields.length === 1 ? "" : "s"}`));
    line.appendChild(inspectd.el("span", `engine ${answer.engine.name}`, "muted"));
    for (const verdict of ["PASS", "FAIL", "ERROR"]) {
      if (counts[verdict]) line.appendChild(inspectd.el("span", `${verdict} ${counts[verdict]}`, `badge ${verdict}`));
    }
    const downloads = line.appendChild(inspectd.el("span", null, "downloads"));
    for (const [kind, label] of [["xlsx", "Download .xlsx"], ["csv", "Download .csv"]]) {
      const a = inspectd.el("a", label, `download-${kind}`);
      a.href = answer.downloads[kind];
      a.setAttribute("download", "");
      downloads.appendChild(a);
    }
    const stats = Object.values(answer.sample || {});
    if (stats.length && stats.some((s) => s.n > 1)) {
      card.appendChild(inspectd.el("h3", "Sample statistics over the analysed fields (ASTM E2109)"));
      card.appendChild(table(["metric", "n", "mean", "SD", "95 % CI", "relative accuracy %"],
        stats.map((s) => [s.name, s.n, number(s.mean), number(s.sd),
                          s.ci95_half_width === null ? "–" : `± ${number(s.ci95_half_width)}`,
                          number(s.relative_accuracy_pct)]),
        [false, true, true, true, true, true]));
    }
    return card;
  }

  function render(answer) {
    result.replaceChildren(summaryCard(answer), ...answer.fields.map(fieldCard));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = [...filesInput.files];
    if (!files.length) return;
    const body = new FormData();
    for (const file of files) body.append("file", file, file.name);
    body.append("engine", engineSelect.value);
    button.disabled = true;
    message.replaceChildren();
    status.textContent = `Analysing ${files.length} file${files.length === 1 ? "" : "s"} with ${engineSelect.value}…`;
    try {
      const answer = await inspectd.json("/api/analyze", { method: "POST", body });
      render(answer);
      history.replaceState(null, "", `/analyse?id=${encodeURIComponent(answer.id)}`);
      status.textContent = "";
    } catch (error) {
      status.textContent = "";
      inspectd.showMessage(message, error.message);
    } finally {
      button.disabled = false;
    }
  });

  showLimits();
  const id = new URLSearchParams(location.search).get("id");
  if (id && /^[0-9a-f]{8,64}$/.test(id)) {
    inspectd.json(`/api/analyze/${id}`).then(render).catch((error) => inspectd.showMessage(message, error.message));
  }
})();
