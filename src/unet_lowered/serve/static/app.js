// The unet serve page: pick or drop an image, show it with the mask, the figures and
// the downloads. Plain JavaScript, no build step; it talks only to this server:
//   POST /v1/preview                the image as an 8-bit PNG (browsers cannot show
//                                   16-bit PNG, TIFF or DICOM themselves)
//   POST /v1/segment?format=png     the mask (exactly unet predict's <id>.png), the
//                                   figures in the X-Unet-Result header
//   POST /v1/segment?format=overlay the overlay PNG (unet predict --overlay), on demand
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  // The colours of unet_lowered.inference.overlay.PALETTE, class 1 first.
  const PALETTE = [[255, 64, 64], [64, 160, 255], [80, 220, 80], [255, 200, 0], [200, 80, 255], [0, 220, 220]];
  const state = {
    model: null, file: null, generation: 0,
    base: null, tint: null, edge: null, maskUrl: null,
    touched: new Set(),  // options the user changed: sent; the others stay the server's
  };

  // ------------------------------------------------------------ helpers

  function setStage(value) { $("stage").dataset.state = value; }
  function status(text) { $("status").textContent = text; }
  function showError(text) {
    const el = $("error");
    el.textContent = text;
    el.hidden = !text;
  }

  async function errorText(resp) {
    try {
      const body = await resp.json();
      if (body && body.error) return body.error;
    } catch (e) { /* not JSON */ }
    return `${resp.status} ${resp.statusText || "error"}`;
  }

  function post(path, file) {
    const form = new FormData();
    form.append("file", file, file.name);
    return fetch(path, { method: "POST", body: form });
  }

  function decodePng(blob) {
    return new Promise((resolve, reject) => {
      const url = URL.createObjectURL(blob);
      const img = new Image();
      img.onload = () => { URL.revokeObjectURL(url); resolve(img); };
      img.onerror = () => { URL.revokeObjectURL(url); reject(new Error("the browser could not decode the PNG")); };
      img.src = url;
    });
  }

  function canvasOf(width, height) {
    const c = document.createElement("canvas");
    c.width = width;
    c.height = height;
    return c;
  }

  function stem(name) {
    const base = (name || "image").split(/[\\/]/).pop();
    const dot = base.lastIndexOf(".");
    return (dot > 0 ? base.slice(0, dot) : base).replace(/[^A-Za-z0-9._-]+/g, "_") || "image";
  }

  // Options the user has not touched are not sent: the server's defaults apply (its
  // flags, else the post-processing the run chose on validation), as in unet predict.
  function query(format) {
    const p = new URLSearchParams({ format });
    const t = $("threshold").value.trim();
    if (t !== "") p.set("threshold", t);
    if (state.touched.has("keep-largest")) p.set("keep_largest", $("keep-largest").value.trim() || "0");
    if (state.touched.has("fill-holes")) p.set("fill_holes", $("fill-holes").checked ? "true" : "false");
    return p.toString();
  }

  // ------------------------------------------------------------ the model's facts

  async function loadModel() {
    const resp = await fetch("/v1/model");
    if (!resp.ok) { showError(await errorText(resp)); return; }
    const m = await resp.json();
    state.model = m;
    const classes = m.num_classes === 1 ? "binary" : `${m.num_classes} classes`;
    const dice = m.validation_dice == null ? "not recorded" : m.validation_dice.toFixed(3);
    const pp = m.prediction;
    const steps = [
      pp.tta ? `test-time augmentation (${pp.tta})` : "",
      pp.watershed
        ? `cut at necks where a membrane shows (pieces joined where their boundary's mean p \u2265 ${pp.watershed})`
        : "",
      pp.min_area ? `objects under ${pp.min_area} px removed` : "",
      pp.keep_largest ? `largest ${pp.keep_largest} kept` : "",
      pp.fill_holes ? "holes filled" : "",
    ].filter(Boolean).join(", ") || "none";
    // A multi-class run takes each pixel's most likely class: no threshold applies.
    const multi = m.num_classes > 1;
    const rule = multi ? "the most likely class per pixel" : `threshold ${pp.threshold}`;
    $("model").textContent =
      `Run ${m.run}: ${classes}, trained at ${m.image_size[0]}\u00d7${m.image_size[1]} px ` +
      `(${m.input_mode}), ${rule}, post-processing: ${steps}, ` +
      `validation Dice ${dice}, unet-lowered ${m.versions.serving.unet_lowered}`;
    $("threshold").disabled = multi;
    $("threshold").value = "";
    $("threshold").placeholder = multi ? "n/a" : String(pp.threshold);
    $("keep-largest").value = pp.keep_largest ? String(pp.keep_largest) : "";
    $("fill-holes").checked = Boolean(pp.fill_holes);
    document.body.dataset.model = "ready";
  }

  // ------------------------------------------------------------ the mask layers

  function colourOf(value) {
    const m = state.model;
    let k = value > 0 ? 1 : 0;
    if (m && m.num_classes > 1) {
      k = m.label_values ? m.label_values.indexOf(value) : value;
    }
    return k > 0 ? PALETTE[(k - 1) % PALETTE.length] : null;
  }

  // Tint every foreground pixel in its class colour; outline each region as the
  // overlay does (a line about min(width, height) / 300 pixels wide).
  function buildLayers(maskImg) {
    const w = maskImg.naturalWidth, h = maskImg.naturalHeight;
    const src = canvasOf(w, h).getContext("2d");
    src.drawImage(maskImg, 0, 0);
    const values = src.getImageData(0, 0, w, h).data;
    const tint = new ImageData(w, h), edge = new ImageData(w, h);
    const t = Math.max(1, Math.round(Math.min(w, h) / 300));
    const at = (x, y) => values[(y * w + x) * 4];
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const v = at(x, y);
        const colour = colourOf(v);
        if (!colour) continue;
        const i = (y * w + x) * 4;
        tint.data.set([colour[0], colour[1], colour[2], 255], i);
        const border = x < t || y < t || x >= w - t || y >= h - t ||
          at(x - t, y) !== v || at(x + t, y) !== v || at(x, y - t) !== v || at(x, y + t) !== v;
        if (border) edge.data.set([colour[0], colour[1], colour[2], 255], i);
      }
    }
    state.tint = canvasOf(w, h);
    state.tint.getContext("2d").putImageData(tint, 0, 0);
    state.edge = canvasOf(w, h);
    state.edge.getContext("2d").putImageData(edge, 0, 0);
  }

  function draw() {
    const view = $("view");
    if (!state.base) return;
    const w = state.base.naturalWidth, h = state.base.naturalHeight;
    if (view.width !== w || view.height !== h) { view.width = w; view.height = h; }
    const ctx = view.getContext("2d");
    ctx.globalAlpha = 1;
    ctx.drawImage(state.base, 0, 0);
    const opacity = Number($("opacity").value) / 100;
    if (state.tint && opacity > 0) {
      ctx.globalAlpha = opacity;
      ctx.drawImage(state.tint, 0, 0);
      ctx.globalAlpha = Math.min(1, 2.5 * opacity);
      ctx.drawImage(state.edge, 0, 0);
      ctx.globalAlpha = 1;
    }
  }

  // ------------------------------------------------------------ one image

  function resetResult() {
    state.tint = state.edge = null;
    if (state.maskUrl) URL.revokeObjectURL(state.maskUrl);
    state.maskUrl = null;
    const a = $("download-mask");
    a.removeAttribute("href");
    a.setAttribute("aria-disabled", "true");
    $("download-overlay").disabled = true;
    for (const id of ["fig-size", "fig-fraction", "fig-components", "fig-quality", "fig-gray", "fig-orientation", "fig-time"]) {
      $(id).textContent = "\u2013";
      delete $(id).dataset.value;
    }
  }

  function showFigures(r, totalMs) {
    const set = (id, text, value) => { $(id).textContent = text; $(id).dataset.value = String(value); };
    set("fig-size", `${r.width} \u00d7 ${r.height} px`, `${r.width}x${r.height}`);
    set("fig-fraction", `${(100 * r.foreground_fraction).toFixed(2)} %`, r.foreground_fraction);
    set("fig-components", String(r.components), r.components);
    set("fig-quality", r.quality == null ? "none (a multi-class run without class statistics)" : r.quality, r.quality ?? "");
    $("fig-quality").classList.toggle("check", r.quality != null && r.quality !== "ok");
    set("fig-gray", r.gray_scale === "inverted" ? "read inverted" : "as stored", r.gray_scale);
    const degrees = r.orientation.startsWith("turned") ? "\u00b0" : "";
    set("fig-orientation", r.orientation === "as stored" ? "as stored" : `read ${r.orientation}${degrees}`, r.orientation);
    set("fig-time", `${r.seconds.toFixed(2)} s on the server, ${(totalMs / 1000).toFixed(2)} s in all`, r.seconds);
  }

  async function segment() {
    const file = state.file;
    if (!file) return;
    const generation = ++state.generation;  // a newer image or option change wins
    const stale = () => generation !== state.generation;
    resetResult();
    showError("");
    setStage("working");
    status(`Reading ${file.name}\u2026`);
    const started = performance.now();
    try {
      if (!state.base || state.baseFile !== file) {
        const resp = await post("/v1/preview", file);
        if (!resp.ok) throw new Error(await errorText(resp));
        const base = await decodePng(await resp.blob());
        if (stale()) return;
        state.base = base;
        state.baseFile = file;
        draw();
      }
      status(`Segmenting ${file.name}\u2026`);
      const resp = await post(`/v1/segment?${query("png")}`, file);
      if (!resp.ok) throw new Error(await errorText(resp));
      const result = JSON.parse(resp.headers.get("X-Unet-Result"));
      const maskBlob = await resp.blob();
      const maskImg = await decodePng(maskBlob);
      if (stale()) return;
      buildLayers(maskImg);
      draw();
      showFigures(result, performance.now() - started);
      state.maskUrl = URL.createObjectURL(maskBlob);
      const a = $("download-mask");
      a.href = state.maskUrl;
      a.download = `${stem(file.name)}_mask.png`;
      a.setAttribute("aria-disabled", "false");
      $("download-overlay").disabled = false;
      $("caption").textContent = `${file.name}: mask ${result.id}`;
      status(result.notes && result.notes.length ? `Done. ${result.notes.join(" ")}` : "Done.");
      setStage("done");
    } catch (e) {
      if (stale()) return;
      showError(e.message || String(e));
      status("");
      setStage("error");
    }
  }

  function pick(file) {
    if (!file) return;
    state.file = file;
    state.base = null;
    state.baseFile = null;
    $("caption").textContent = file.name;
    segment();
  }

  async function downloadOverlay() {
    const file = state.file;
    if (!file) return;
    const button = $("download-overlay");
    button.disabled = true;
    status("Drawing the overlay\u2026");
    try {
      const resp = await post(`/v1/segment?${query("overlay")}`, file);
      if (!resp.ok) throw new Error(await errorText(resp));
      const url = URL.createObjectURL(await resp.blob());
      const a = document.createElement("a");
      a.href = url;
      a.download = `${stem(file.name)}_overlay.png`;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      status("Done.");
    } catch (e) {
      showError(e.message || String(e));
      status("");
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------ wiring

  $("file").addEventListener("change", (ev) => pick(ev.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    pick(ev.dataTransfer.files[0]);
  });
  $("opacity").addEventListener("input", () => {
    $("opacity-value").textContent = `${$("opacity").value}%`;
    draw();
  });
  for (const id of ["threshold", "keep-largest", "fill-holes"]) {
    $(id).addEventListener("change", () => { state.touched.add(id); segment(); });
  }
  $("download-overlay").addEventListener("click", downloadOverlay);
  loadModel().catch((e) => showError(`cannot reach the service: ${e.message || e}`));
})();
