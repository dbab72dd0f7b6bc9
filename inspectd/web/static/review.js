// Review page: correct the engine's mask of one frame (brush, fill, undo, zoom, pan) and save it as a label;
// list the labelled fields; run a fine-tuning and, after comparing its scores, make the new model active.
// Every string from the server is written as text (inspectd.el / textContent), never as HTML.
"use strict";
(() => {
  // Overlay colours per class index (0 melted: no colour, the frame shows through).
  const PALETTE = [[0, 0, 0, 0], [0, 200, 83, 255], [234, 67, 53, 255]];
  const CLASS_NAMES = ["melted", "unmelted", "pore"];
  const UNDO_STEPS = 30;
  const ZOOM_MIN = 0.05, ZOOM_MAX = 32;

  const $ = (id) => document.getElementById(id);
  const message = $("message");
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const key = new URLSearchParams(location.search).get("key");

  const view = {
    width: 0, height: 0, mask: null, image: null, overlay: null, overlayData: null,
    zoom: 1, x: 0, y: 0,              // image coordinate at the canvas' top-left corner
    tool: "brush", cls: 1, size: 9, opacity: 0.45,
    undo: [], stroke: null, pan: null, spaceHeld: false, dirty: false, last: null,
  };

  inspectd.nav("review");

  // ---- loading ------------------------------------------------------------------------

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = () => reject(new Error(`could not load ${url}`));
      image.src = url;
    });
  }

  // A class-index PNG -> Uint8Array of class indices (the grey value of each pixel).
  async function loadMask(url, width, height) {
    const image = await loadImage(url);
    if (image.naturalWidth !== width || image.naturalHeight !== height) throw new Error("the mask does not fit the frame");
    const scratch = document.createElement("canvas");
    scratch.width = width; scratch.height = height;
    const c = scratch.getContext("2d", { willReadFrequently: true });
    c.drawImage(image, 0, 0);
    const rgba = c.getImageData(0, 0, width, height).data;
    const mask = new Uint8Array(width * height);
    for (let i = 0; i < mask.length; i++) mask[i] = Math.min(rgba[i * 4], 2);
    return mask;
  }

  async function openFrame() {
    const base = `/api/review/frames/${encodeURIComponent(key)}`;
    const info = await inspectd.json(base);
    const [image, mask] = await Promise.all([loadImage(`${base}/enhanced.png`), loadMask(`${base}/mask.png`, info.width, info.height)]);
    view.width = info.width; view.height = info.height; view.image = image; view.mask = mask;
    view.overlay = document.createElement("canvas");
    view.overlay.width = info.width; view.overlay.height = info.height;
    view.overlayData = new ImageData(info.width, info.height);
    paintOverlay(0, 0, info.width, info.height);
    showFacts(info);
    $("editor").hidden = false;
    $("reset").disabled = !info.has_proposal;
    $("save").disabled = false;  // saving the proposal unchanged says "the engine got this one right"
    resizeCanvas();
    const fit = fitZoom();
    setZoom(Math.min(1, fit), 0, 0);
    view.x = 0; view.y = 0;
    draw();
    canvas.dataset.ready = "1";
  }

  function showFacts(info) {
    $("field-title").textContent = info.key;
    const facts = $("facts");
    const rows = [["size", `${info.width} × ${info.height} px`], ["source", info.source || "–"],
      ["verdict", info.verdict || "–"], ["engine", info.engine ? `${info.engine} ${(info.model_hash || "").slice(0, 12)}` : "–"],
      ["label", info.labelled ? `saved ${info.saved_at || ""} (${info.held_out ? "held out" : "training"})` : "not labelled yet"]];
    facts.replaceChildren(...rows.map(([k, v]) => {
      const div = inspectd.el("div");
      div.append(inspectd.el("span", k, "k"), inspectd.el("span", v));
      return div;
    }));
  }

  // ---- drawing ------------------------------------------------------------------------

  function paintOverlay(x0, y0, x1, y1) {
    const { width, mask } = view;
    const data = view.overlayData.data;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        const i = y * width + x, colour = PALETTE[mask[i]], o = i * 4;
        data[o] = colour[0]; data[o + 1] = colour[1]; data[o + 2] = colour[2]; data[o + 3] = colour[3];
      }
    }
    view.overlay.getContext("2d").putImageData(view.overlayData, 0, 0, x0, y0, x1 - x0, y1 - y0);
  }

  function resizeCanvas() {
    const ratio = window.devicePixelRatio || 1;
    const rect = canvas.getBoundingClientRect();
    canvas.width = Math.round(rect.width * ratio);
    canvas.height = Math.round(rect.height * ratio);
  }

  function draw() {
    if (!view.image) return;
    const ratio = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const scale = ratio * view.zoom;
    ctx.setTransform(scale, 0, 0, scale, -view.x * scale, -view.y * scale);
    ctx.imageSmoothingEnabled = view.zoom < 1;
    ctx.globalAlpha = 1;
    ctx.drawImage(view.image, 0, 0);
    ctx.globalAlpha = view.opacity;
    ctx.drawImage(view.overlay, 0, 0);
    ctx.globalAlpha = 1;
    $("zoom-value").textContent = `${Math.round(view.zoom * 100)} %`;
  }

  function fitZoom() {
    const rect = canvas.getBoundingClientRect();
    return Math.min(rect.width / view.width, rect.height / view.height);
  }

  // Zoom so that the canvas point (cx, cy) (CSS px) keeps showing the same image point.
  function setZoom(zoom, cx, cy) {
    const clamped = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, zoom));
    const ix = view.x + cx / view.zoom, iy = view.y + cy / view.zoom;
    view.zoom = clamped;
    view.x = ix - cx / clamped; view.y = iy - cy / clamped;
    draw();
  }

  // The image pixel under a pointer event (may lie outside the image).
  function pixelAt(event) {
    const rect = canvas.getBoundingClientRect();
    const x = view.x + (event.clientX - rect.left) / view.zoom;
    const y = view.y + (event.clientY - rect.top) / view.zoom;
    return [Math.floor(x), Math.floor(y)];
  }

  // ---- editing ------------------------------------------------------------------------

  // Pixels whose centre lies within size/2 of the segment a-b (pixel centres), in exact integer arithmetic:
  // a stroke is the union of these capsules between successive pointer positions.
  function paintSegment(ax, ay, bx, by) {
    const { width, height, mask, stroke } = view;
    const size = view.size, cls = view.cls, reach = Math.ceil(size / 2);
    const x0 = Math.max(0, Math.min(ax, bx) - reach), x1 = Math.min(width - 1, Math.max(ax, bx) + reach);
    const y0 = Math.max(0, Math.min(ay, by) - reach), y1 = Math.min(height - 1, Math.max(ay, by) + reach);
    if (x0 > x1 || y0 > y1) return;
    const dx = bx - ax, dy = by - ay, length2 = dx * dx + dy * dy, size2 = size * size;
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        let inside;
        const t = (x - ax) * dx + (y - ay) * dy;
        if (length2 === 0 || t <= 0) inside = 4 * ((x - ax) ** 2 + (y - ay) ** 2) <= size2;
        else if (t >= length2) inside = 4 * ((x - bx) ** 2 + (y - by) ** 2) <= size2;
        else { const cross = (x - ax) * dy - (y - ay) * dx; inside = 4 * cross * cross <= size2 * length2; }
        if (!inside) continue;
        const i = y * width + x;
        if (mask[i] === cls) continue;
        if (!stroke.before.has(i)) stroke.before.set(i, mask[i]);
        mask[i] = cls;
      }
    }
    paintOverlay(x0, y0, x1 + 1, y1 + 1);
  }

  // 4-connected flood fill of the region of one class under (x, y) with the chosen class.
  function fill(x, y) {
    const { width, height, mask } = view;
    if (x < 0 || y < 0 || x >= width || y >= height) return null;
    const start = y * width + x, from = mask[start], to = view.cls;
    if (from === to) return null;
    const changed = [];
    const stack = [start];
    mask[start] = to;
    let minX = x, maxX = x, minY = y, maxY = y;
    while (stack.length) {
      const i = stack.pop();
      changed.push(i);
      const px = i % width, py = (i - px) / width;
      if (px < minX) minX = px; if (px > maxX) maxX = px; if (py < minY) minY = py; if (py > maxY) maxY = py;
      if (px > 0 && mask[i - 1] === from) { mask[i - 1] = to; stack.push(i - 1); }
      if (px < width - 1 && mask[i + 1] === from) { mask[i + 1] = to; stack.push(i + 1); }
      if (py > 0 && mask[i - width] === from) { mask[i - width] = to; stack.push(i - width); }
      if (py < height - 1 && mask[i + width] === from) { mask[i + width] = to; stack.push(i + width); }
    }
    paintOverlay(minX, minY, maxX + 1, maxY + 1);
    return { indices: Int32Array.from(changed), old: new Uint8Array(changed.length).fill(from) };
  }

  function pushUndo(step) {
    if (!step || !step.indices.length) return;
    view.undo.push(step);
    if (view.undo.length > UNDO_STEPS) view.undo.shift();
    changed();
  }

  function undo() {
    const step = view.undo.pop();
    if (!step) return;
    let minX = view.width, minY = view.height, maxX = 0, maxY = 0;
    for (let k = step.indices.length - 1; k >= 0; k--) {
      const i = step.indices[k], px = i % view.width, py = (i - px) / view.width;
      view.mask[i] = step.old[k];
      minX = Math.min(minX, px); maxX = Math.max(maxX, px); minY = Math.min(minY, py); maxY = Math.max(maxY, py);
    }
    paintOverlay(minX, minY, maxX + 1, maxY + 1);
    changed();
    draw();
  }

  function changed() {
    view.dirty = true;
    $("undo").disabled = view.undo.length === 0;
    $("undo").textContent = view.undo.length ? `undo (${view.undo.length})` : "undo";
    $("save").disabled = false;
    $("save-status").replaceChildren(inspectd.el("div", "unsaved changes", "muted"));
  }

  // ---- pointer ------------------------------------------------------------------------

  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  canvas.addEventListener("pointerdown", (event) => {
    if (!view.mask) return;
    canvas.setPointerCapture(event.pointerId);
    const panning = view.tool === "pan" || view.spaceHeld || event.button === 1 || event.button === 2;
    if (panning) {
      view.pan = { x: event.clientX, y: event.clientY, viewX: view.x, viewY: view.y };
      return;
    }
    if (event.button !== 0) return;
    const [x, y] = pixelAt(event);
    if (view.tool === "fill") {
      pushUndo(fill(x, y));
      draw();
      return;
    }
    view.stroke = { before: new Map(), last: [x, y] };
    paintSegment(x, y, x, y);
    draw();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (view.mask) {
      const [x, y] = pixelAt(event);
      const inside = x >= 0 && y >= 0 && x < view.width && y < view.height;
      $("cursor-info").textContent = inside ? `x ${x}  y ${y}  ${CLASS_NAMES[view.mask[y * view.width + x]]}` : "";
    }
    if (view.pan) {
      view.x = view.pan.viewX - (event.clientX - view.pan.x) / view.zoom;
      view.y = view.pan.viewY - (event.clientY - view.pan.y) / view.zoom;
      draw();
      return;
    }
    if (!view.stroke) return;
    const [x, y] = pixelAt(event);
    const [lx, ly] = view.stroke.last;
    if (x === lx && y === ly) return;
    paintSegment(lx, ly, x, y);
    view.stroke.last = [x, y];
    draw();
  });
  const endPointer = () => {
    view.pan = null;
    if (!view.stroke) return;
    const before = view.stroke.before;
    view.stroke = null;
    pushUndo({ indices: Int32Array.from(before.keys()), old: Uint8Array.from(before.values()) });
  };
  canvas.addEventListener("pointerup", endPointer);
  canvas.addEventListener("pointercancel", endPointer);
  canvas.addEventListener("wheel", (event) => {
    if (!view.mask) return;
    event.preventDefault();
    const rect = canvas.getBoundingClientRect();
    setZoom(view.zoom * (event.deltaY < 0 ? 1.25 : 0.8), event.clientX - rect.left, event.clientY - rect.top);
  }, { passive: false });

  // ---- controls -----------------------------------------------------------------------

  function selectRadio(name, value) {
    const input = document.querySelector(`input[name="${name}"][value="${value}"]`);
    if (input) { input.checked = true; input.dispatchEvent(new Event("change", { bubbles: true })); }
  }
  for (const input of document.querySelectorAll('input[name="cls"]')) {
    input.addEventListener("change", () => { if (input.checked) view.cls = Number(input.value); });
  }
  for (const input of document.querySelectorAll('input[name="tool"]')) {
    input.addEventListener("change", () => { if (input.checked) { view.tool = input.value; canvas.className = input.value; } });
  }
  const sizeInput = $("size"), opacityInput = $("opacity");
  const setSize = (value) => {
    view.size = Math.max(1, Math.min(64, Math.round(value)));
    sizeInput.value = view.size; $("size-value").textContent = view.size;
  };
  sizeInput.addEventListener("input", () => setSize(Number(sizeInput.value)));
  opacityInput.addEventListener("input", () => {
    view.opacity = Number(opacityInput.value) / 100; $("opacity-value").textContent = opacityInput.value; draw();
  });
  const centre = () => { const r = canvas.getBoundingClientRect(); return [r.width / 2, r.height / 2]; };
  $("zoom-in").addEventListener("click", () => setZoom(view.zoom * 1.25, ...centre()));
  $("zoom-out").addEventListener("click", () => setZoom(view.zoom * 0.8, ...centre()));
  $("zoom-reset").addEventListener("click", () => { view.zoom = 1; view.x = 0; view.y = 0; draw(); });
  $("zoom-fit").addEventListener("click", () => { view.zoom = fitZoom(); view.x = 0; view.y = 0; draw(); });
  $("undo").addEventListener("click", undo);
  $("reset").addEventListener("click", async () => {
    try {
      const proposal = await loadMask(`/api/review/frames/${encodeURIComponent(key)}/proposal.png`, view.width, view.height);
      const indices = [], old = [];
      for (let i = 0; i < proposal.length; i++) {
        if (proposal[i] !== view.mask[i]) { indices.push(i); old.push(view.mask[i]); view.mask[i] = proposal[i]; }
      }
      paintOverlay(0, 0, view.width, view.height);
      pushUndo({ indices: Int32Array.from(indices), old: Uint8Array.from(old) });
      draw();
    } catch (error) { inspectd.showMessage(message, error.message); }
  });
  $("save").addEventListener("click", save);
  window.addEventListener("resize", () => { if (view.image) { resizeCanvas(); draw(); } });
  window.addEventListener("beforeunload", (event) => { if (view.dirty) event.preventDefault(); });
  document.addEventListener("keydown", (event) => {
    if (!view.mask || event.target.closest("input, textarea, select")) return;
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") { event.preventDefault(); undo(); return; }
    if (event.key === " ") { view.spaceHeld = true; canvas.className = "pan"; event.preventDefault(); return; }
    const byKey = { 1: ["cls", 0], 2: ["cls", 1], 3: ["cls", 2], b: ["tool", "brush"], f: ["tool", "fill"] };
    const choice = byKey[event.key.toLowerCase()];
    if (choice) selectRadio(...choice);
    if (event.key === "[") setSize(view.size - 1);
    if (event.key === "]") setSize(view.size + 1);
    if (event.key === "+" || event.key === "=") setZoom(view.zoom * 1.25, ...centre());
    if (event.key === "-") setZoom(view.zoom * 0.8, ...centre());
  });
  document.addEventListener("keyup", (event) => {
    if (event.key === " ") { view.spaceHeld = false; canvas.className = view.tool; }
  });

  // ---- saving: the mask as a one-channel 8-bit PNG of class indices --------------------

  const CRC_TABLE = (() => {
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
    return table;
  })();
  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }
  function chunk(type, data) {
    const out = new Uint8Array(12 + data.length), dv = new DataView(out.buffer);
    dv.setUint32(0, data.length);
    for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
    out.set(data, 8);
    dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  }
  async function encodeMaskPng(mask, width, height) {
    const rows = new Uint8Array((width + 1) * height);  // filter byte 0 before each row
    for (let y = 0; y < height; y++) rows.set(mask.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
    const zlib = new Uint8Array(await new Response(new Blob([rows]).stream().pipeThrough(new CompressionStream("deflate"))).arrayBuffer());
    const header = new Uint8Array(13), dv = new DataView(header.buffer);
    dv.setUint32(0, width); dv.setUint32(4, height);
    header[8] = 8; header[9] = 0;  // 8-bit grey
    const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
    return new Blob([signature, chunk("IHDR", header), chunk("IDAT", zlib), chunk("IEND", new Uint8Array(0))], { type: "image/png" });
  }

  async function save() {
    const button = $("save");
    button.disabled = true;
    try {
      const png = await encodeMaskPng(view.mask, view.width, view.height);
      const saved = await inspectd.json(`/api/review/labels/${encodeURIComponent(key)}`,
        { method: "POST", headers: { "Content-Type": "image/png" }, body: png });
      view.dirty = false;
      button.disabled = false;
      const corrected = typeof saved.corrected_px === "number" ? `, ${saved.corrected_px} px differ from the engine's proposal` : "";
      $("save-status").replaceChildren(inspectd.el("div",
        `saved as a ${saved.held_out ? "held-out" : "training"} field${corrected}`, "message info"));
      $("save-status").dataset.saved = String(Date.now());
      const info = await inspectd.json(`/api/review/frames/${encodeURIComponent(key)}`);
      showFacts(info);
      await Promise.all([showLabels(), showFineTune()]);
    } catch (error) {
      button.disabled = false;
      $("save-status").replaceChildren(inspectd.el("div", `not saved: ${error.message}`, "message error"));
    }
  }

  // ---- labelled fields ------------------------------------------------------------------

  async function showLabels() {
    const listing = await inspectd.json("/api/review/labels");
    const body = document.querySelector("#labels tbody");
    body.replaceChildren(...listing.fields.map((field) => {
      const tr = inspectd.el("tr");
      tr.dataset.key = field.key;
      const link = inspectd.el("a", field.key);
      link.href = `/review?key=${encodeURIComponent(field.key)}`;
      tr.appendChild(inspectd.el("td")).appendChild(link);
      const toggle = inspectd.el("input");
      toggle.type = "checkbox"; toggle.checked = field.held_out; toggle.className = "held-out";
      toggle.title = "held out: kept out of training, used to score models";
      toggle.addEventListener("change", async () => {
        try {
          await inspectd.json(`/api/review/labels/${encodeURIComponent(field.key)}/held-out`,
            { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ held_out: toggle.checked }) });
          await showFineTune();
        } catch (error) { toggle.checked = !toggle.checked; inspectd.showMessage(message, error.message); }
      });
      tr.appendChild(inspectd.el("td")).appendChild(toggle);
      const pct = field.class_pct || {};
      tr.appendChild(inspectd.el("td", inspectd.fmt(pct.unmelted, 1), "num"));
      tr.appendChild(inspectd.el("td", inspectd.fmt(pct.pore, 2), "num"));
      tr.appendChild(inspectd.el("td", typeof field.corrected_px === "number" ? field.corrected_px : "–", "num"));
      tr.appendChild(inspectd.el("td", field.saved_at || "–"));
      const remove = inspectd.el("button", "remove");
      remove.addEventListener("click", async () => {
        try {
          await inspectd.json(`/api/review/labels/${encodeURIComponent(field.key)}`, { method: "DELETE" });
          await Promise.all([showLabels(), showFineTune()]);
        } catch (error) { inspectd.showMessage(message, error.message); }
      });
      tr.appendChild(inspectd.el("td")).appendChild(remove);
      return tr;
    }));
    const held = listing.fields.filter((f) => f.held_out).length;
    $("labels-note").textContent = listing.fields.length
      ? `${listing.fields.length} field(s): ${listing.fields.length - held} for training, ${held} held out for scoring ` +
        `(by default one field in ${listing.hold_out_every} is held out: the 2nd, 5th, 8th … saved; tick or untick to move one).`
      : "No labelled field yet: correct a frame's mask above and save it.";
    $("folders").textContent = `On disk, as inspectd train reads them: training ${listing.folders.train.images} + ` +
      `${listing.folders.train.masks}; held out ${listing.folders.heldout.images} + ${listing.folders.heldout.masks}.`;
  }

  async function showFrames() {
    const listing = await inspectd.json("/api/review/frames");
    $("picker").hidden = false;
    const body = document.querySelector("#frames tbody");
    if (!listing.frames.length) {
      const cell = inspectd.el("td", "No frames kept yet: frames appear here as the line inspects them or as you analyse uploads.", "muted");
      cell.colSpan = 4;
      body.replaceChildren(inspectd.el("tr"));
      body.firstChild.appendChild(cell);
      return;
    }
    body.replaceChildren(...listing.frames.map((frame) => {
      const tr = inspectd.el("tr");
      const link = inspectd.el("a", frame.key);
      link.href = `/review?key=${encodeURIComponent(frame.key)}`;
      tr.appendChild(inspectd.el("td")).appendChild(link);
      tr.appendChild(inspectd.el("td", frame.source || "–"));
      tr.appendChild(inspectd.el("td", frame.verdict || "–"));
      tr.appendChild(inspectd.el("td", frame.labelled ? (frame.held_out ? "held out" : "training") : ""));
      return tr;
    }));
  }

  // ---- fine-tuning ----------------------------------------------------------------------

  let polling = null;

  function signed(value) {
    return typeof value === "number" ? (value >= 0 ? "+" : "") + value.toFixed(3) : "–";
  }

  function scoresTable(scores) {
    const wrap = inspectd.el("div");
    wrap.appendChild(inspectd.el("h3", `Held-out score: ${scores.metric} per class on ${scores.n_images} field(s) no model trained on`));
    if (scores.label_mode === "binary") wrap.appendChild(inspectd.el("p", `Labels without pores: ${scores.label_mode_note}`, "muted"));
    const t = inspectd.el("table");
    t.id = "scores";
    const head = inspectd.el("tr");
    for (const [label, numeric] of [["", false], ["before (now)", true], ["after (new)", true], ["change", true]]) {
      head.appendChild(inspectd.el("th", label, numeric ? "num" : ""));
    }
    t.appendChild(inspectd.el("thead")).appendChild(head);
    const body = t.appendChild(inspectd.el("tbody"));
    for (const row of scores.rows) {
      const tr = body.appendChild(inspectd.el("tr"));
      tr.appendChild(inspectd.el("td", row.class));
      tr.appendChild(inspectd.el("td", inspectd.fmt(row.before, 3), "num"));
      tr.appendChild(inspectd.el("td", inspectd.fmt(row.after, 3), "num"));
      const trend = typeof row.change === "number" ? (row.change > 0.0005 ? " up" : row.change < -0.0005 ? " down" : "") : "";
      tr.appendChild(inspectd.el("td", signed(row.change), "num" + trend));
    }
    wrap.appendChild(t);
    return wrap;
  }

  async function showFineTune() {
    let run;
    try { run = await inspectd.json("/api/finetune"); } catch (error) { inspectd.showMessage(message, error.message); return; }
    const section = $("finetune");
    section.dataset.state = run.state;
    const active = run.active || {};
    $("active-model").textContent = `The station runs: ${active.engine || "–"}` +
      (active.model ? ` ${active.model}` : active.engine === "unet" ? " (bundled model)" : "") +
      (active.model_hash ? ` (sha256 ${active.model_hash.slice(0, 12)})` : "") +
      ` · fine-tuning starts from ${active.init || "bundled"} · ${run.labelled.train} training and ${run.labelled.heldout} held-out field(s)` +
      (run.mode === "offline" ? " · no daemon here (inspectd ui)" : "");
    const running = run.state === "running";
    $("finetune-start").disabled = running || run.labelled.train < 1 || run.labelled.heldout < 1;
    $("finetune-start").title = $("finetune-start").disabled && !running
      ? "needs at least one training field and one held-out field" : "";
    $("finetune-cancel").hidden = !running;
    const progress = $("finetune-progress");
    progress.hidden = run.state === "idle";
    $("finetune-bar").value = run.progress || 0;
    $("finetune-message").textContent = run.state === "idle" ? "" : `${run.state}: ${run.message || ""}`;
    $("finetune-log").textContent = (run.log_tail || []).join("\n");
    $("finetune-scores").replaceChildren(...(run.scores ? [scoresTable(run.scores)] : []));
    if (run.training_summary) $("finetune-scores").appendChild(inspectd.el("p", `Training: ${run.training_summary}`, "muted"));
    const activate = $("finetune-activate");
    activate.replaceChildren();
    if (run.model && (run.state === "done" || run.state === "activated")) {
      activate.appendChild(inspectd.el("p", `New model: ${run.model.path} (sha256 ${run.model.sha256.slice(0, 12)})`, "muted"));
      if (run.state === "activated") {
        activate.appendChild(inspectd.el("div", `Active on the line since ${run.activation.at}: verdicts carry model hash ` +
          `${(run.activation.engine.model_hash || "").slice(0, 12)}; it ${run.activation.note}.`, "message info"));
      } else if (run.mode === "offline") {
        activate.appendChild(inspectd.el("div", run.model.activate_hint, "message info"));
      } else {
        const button = inspectd.el("button", "Make the new model active on the line", "primary");
        button.id = "finetune-activate-button";
        button.addEventListener("click", async () => {
          button.disabled = true; button.textContent = "loading the new model…";
          try {
            await inspectd.json("/api/finetune/activate", { method: "POST" });
          } catch (error) { inspectd.showMessage(message, error.message); }
          await showFineTune();
        });
        activate.appendChild(button);
        activate.appendChild(inspectd.el("p", "The line keeps the current model until you press it; frames being analysed finish on the current model.", "muted"));
      }
    }
    if (running && !polling) polling = setInterval(showFineTune, 1000);
    if (!running && polling) { clearInterval(polling); polling = null; }
  }

  $("finetune-start").addEventListener("click", async () => {
    try {
      await inspectd.json("/api/finetune", { method: "POST" });
    } catch (error) { inspectd.showMessage(message, error.message); }
    await showFineTune();
  });
  $("finetune-cancel").addEventListener("click", async () => {
    try { await inspectd.json("/api/finetune/cancel", { method: "POST" }); } catch (error) { inspectd.showMessage(message, error.message); }
    await showFineTune();
  });

  // ---- start ------------------------------------------------------------------------------

  (async () => {
    try {
      if (key) await openFrame(); else await showFrames();
    } catch (error) {
      inspectd.showMessage(message, error.message);
      if (key) await showFrames().catch(() => {});
    }
    await Promise.all([showLabels().catch((error) => inspectd.showMessage(message, error.message)), showFineTune()]);
  })();
})();
