// The unet serve page: pick or drop an image, show it with the mask, the figures and
// the downloads. Plain JavaScript, no build step; it talks only to this server:
//   POST /v1/preview                the image as an 8-bit PNG (browsers cannot show
//                                   16-bit PNG, TIFF or DICOM themselves)
//   POST /v1/segment?format=png     the mask (exactly unet predict's <id>.png), the
//                                   figures in the X-Unet-Result header
//   POST /v1/segment?format=overlay the overlay PNG (unet predict --overlay), on demand
// The mask's tint and outline are drawn by layers.js in a Web Worker.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  // The colours of unet_lowered.inference.overlay.PALETTE, class 1 first.
  const PALETTE = [[255, 64, 64], [64, 160, 255], [80, 220, 80], [255, 200, 0], [200, 80, 255], [0, 220, 220]];
  const OPTIONS = ["threshold", "keep-largest", "fill-holes", "as-stored"];
  const SETTLE_MS = 300;  // option changes closer together than this send one request
  // The longest side of the picture drawn: a larger image is shown scaled down (drawing
  // 7000 px at full size held the page for most of a second); the downloads are full size.
  const MAX_VIEW = 2048;
  const NARROW = window.matchMedia("(max-width: 760px)");
  const state = {
    model: null, file: null, pickNote: "", generation: 0,
    base: null, baseFile: null, tint: null, edge: null, maskUrl: null,
    viewSize: null,    // [width, height] of the picture drawn
    result: null,      // the figures of the mask shown; null while there is none
    controller: null,  // aborts the requests of a superseded image or option
    timer: null,       // the option change waiting to settle
    wanted: null,      // "mask" or "overlay": download it once the result is in
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
  // A label over the picture while it shows no result ("working…", "no result").
  function veil(text) {
    $("veil").textContent = text;
    $("veil").hidden = !text;
  }

  // The notes on the result, worded for this page (the API's name the query parameters).
  function forThePage(note) {
    return note.replace(
      /(?:polarity|orientation)=keep(?: or (?:polarity|orientation)=keep)? turns this off/,
      "tick \u201cRead as stored\u201d to turn this off");
  }
  function showNotices(notes) {
    const el = $("notice");
    const all = [state.pickNote, ...notes.map(forThePage)].filter(Boolean);
    el.replaceChildren(...all.map((text) => {
      const p = document.createElement("p");
      p.textContent = text;
      return p;
    }));
    el.hidden = !all.length;
  }

  const unreachable = () =>
    `Cannot reach the unet serve server at ${window.location.origin}; is it still running?`;

  async function errorText(resp, file) {
    let text = `${resp.status} ${resp.statusText || "error"}`;
    try {
      const body = await resp.json();
      if (body && body.error) text = body.error;
    } catch (e) { /* not JSON */ }
    // The server names the upload where it read it; a refusal before that does not.
    return file && !text.startsWith(`${file.name}:`) ? `${file.name}: ${text}` : text;
  }

  function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, ms);
      if (signal) {
        signal.addEventListener("abort", () => {
          clearTimeout(timer);
          reject(new DOMException("superseded", "AbortError"));
        }, { once: true });
      }
    });
  }

  // POST the file. A 503 (the server busy) is tried once more after its Retry-After; a
  // network failure becomes a sentence that says which server did not answer.
  async function post(path, file, signal) {
    for (let attempt = 0; ; attempt++) {
      const form = new FormData();
      form.append("file", file, file.name);
      let resp;
      try {
        resp = await fetch(path, { method: "POST", body: form, signal });
      } catch (e) {
        if (e.name === "AbortError") throw e;
        throw new Error(unreachable());
      }
      if (resp.status !== 503 || attempt > 0) return resp;
      const after = Number(resp.headers.get("Retry-After") ?? 1);
      await sleep(1000 * (after >= 0 && after <= 30 ? after : 1), signal);
    }
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

  // The picture, decoded off the main thread where the browser can (an <img> of a
  // 7000 px image was decoded on the first draw, freezing the page for about a second).
  async function decodePicture(blob, size) {
    if (window.createImageBitmap) {
      const [w, h] = size;
      const scaled = w !== state.viewSize[0] || h !== state.viewSize[1];
      const resize = { resizeWidth: state.viewSize[0], resizeHeight: state.viewSize[1], resizeQuality: "high" };
      try { return await createImageBitmap(blob, scaled ? resize : undefined); } catch (e) { /* below */ }
    }
    return decodePng(blob);
  }

  function viewSizeOf(w, h) {
    const scale = Math.min(1, MAX_VIEW / Math.max(w, h));
    return [Math.max(1, Math.round(w * scale)), Math.max(1, Math.round(h * scale))];
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
    const pp = state.model ? state.model.prediction : {};
    if (state.touched.has("threshold")) p.set("threshold", $("threshold").value.trim());
    if (state.touched.has("keep-largest")) p.set("keep_largest", $("keep-largest").value.trim() || "0");
    if (state.touched.has("fill-holes")) p.set("fill_holes", $("fill-holes").checked ? "true" : "false");
    if (state.touched.has("as-stored")) {
      const stored = $("as-stored").checked;
      if (stored || pp.polarity === "keep") p.set("polarity", stored ? "keep" : "auto");
      if (stored || pp.orientation === "keep") p.set("orientation", stored ? "keep" : "auto");
    }
    return p.toString();
  }

  // ------------------------------------------------------------ the model's facts

  async function loadModel() {
    let resp;
    try { resp = await fetch("/v1/model"); } catch (e) { throw new Error(unreachable()); }
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
      `Run ${m.run_name}: ${classes}, trained at ${m.image_size[0]}\u00d7${m.image_size[1]} px ` +
      `(${m.input_mode}), ${rule}, post-processing: ${steps}, ` +
      `validation Dice ${dice}, unet-lowered ${m.versions.serving.unet_lowered}`;
    const threshold = $("threshold");
    threshold.disabled = multi;
    threshold.value = multi ? "" : String(pp.threshold);  // what applies, also to screen readers
    threshold.placeholder = multi ? "n/a" : "";
    $("keep-largest").value = pp.keep_largest ? String(pp.keep_largest) : "";
    $("fill-holes").checked = Boolean(pp.fill_holes);
    $("as-stored").checked = pp.polarity === "keep" && pp.orientation === "keep";
    showLegend(m);
    document.body.dataset.model = "ready";
  }

  // Multi-class runs: which colour is which class (its name from `unet prepare
  // --class-names` first, the mask's value in brackets).
  function showLegend(m) {
    const legend = $("legend");
    const items = [];
    for (let k = 1; k < m.num_classes; k++) {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = `rgb(${PALETTE[(k - 1) % PALETTE.length].join(",")})`;
      const value = m.label_values ? m.label_values[k] : k;
      const name = m.class_names ? `${m.class_names[k]}: ` : "";
      li.append(swatch, `${name}class ${k} (mask value ${value})`);
      items.push(li);
    }
    legend.replaceChildren(...items);
    legend.hidden = !items.length;
  }

  // ------------------------------------------------------------ the mask layers

  // Mask value (0-255) -> class (0: background).
  function classTable() {
    const m = state.model;
    const table = new Uint8Array(256);
    for (let v = 1; v < 256; v++) {
      let k = 1;
      if (m && m.num_classes > 1) k = m.label_values ? m.label_values.indexOf(v) : v;
      table[v] = k > 0 && k < 256 ? k : 0;
    }
    return table;
  }

  let worker = null, workerBroken = false, jobs = 0;
  const pending = new Map();

  function layersInWorker(blob, classOf, binary) {
    if (!worker) {
      worker = new Worker("/static/layers.js");
      worker.onmessage = (ev) => {
        const job = pending.get(ev.data.id);
        pending.delete(ev.data.id);
        if (!job) return;
        if (ev.data.error) job.reject(new Error(ev.data.error));
        else job.resolve({ tint: ev.data.tint, edge: ev.data.edge });
      };
      worker.onerror = (ev) => {
        ev.preventDefault();
        workerBroken = true;
        for (const job of pending.values()) job.reject(new Error(ev.message || "worker failed"));
        pending.clear();
      };
    }
    const id = ++jobs;
    return new Promise((resolve, reject) => {
      pending.set(id, { resolve, reject });
      worker.postMessage({ id, blob, classOf, palette: PALETTE, binary, size: state.viewSize });
    });
  }

  async function layersHere(blob, classOf, binary) {
    const img = await decodePng(blob);
    const w = img.naturalWidth, h = img.naturalHeight;
    const src = canvasOf(w, h).getContext("2d");
    src.drawImage(img, 0, 0);
    const { tint, edge } = maskLayers(src.getImageData(0, 0, w, h).data, w, h, classOf, PALETTE, binary);
    const layer = (data) => {
      const c = canvasOf(w, h);
      c.getContext("2d").putImageData(new ImageData(data, w, h), 0, 0);
      return c;
    };
    return { tint: layer(tint), edge: layer(edge) };
  }

  // The tint and outline of a mask PNG, off the main thread where the browser can.
  async function buildLayers(blob) {
    const classOf = classTable();
    const binary = !state.model || state.model.num_classes === 1;
    if (window.Worker && window.OffscreenCanvas && !workerBroken) {
      try {
        return await layersInWorker(blob, classOf, binary);
      } catch (e) {
        workerBroken = true;
      }
    }
    return layersHere(blob, classOf, binary);
  }

  function draw() {
    const view = $("view");
    if (!state.base) {  // nothing to show: an empty canvas, not the last image
      view.width = 0;
      view.height = 0;
      return;
    }
    const [w, h] = state.viewSize;
    if (view.width !== w || view.height !== h) { view.width = w; view.height = h; }
    const ctx = view.getContext("2d");
    ctx.imageSmoothingEnabled = false;  // the layers' colours stay exact where scaled
    ctx.globalAlpha = 1;
    ctx.drawImage(state.base, 0, 0, w, h);
    const opacity = Number($("opacity").value) / 100;
    if (state.tint && opacity > 0) {
      ctx.globalAlpha = opacity;
      ctx.drawImage(state.tint, 0, 0, w, h);
      ctx.globalAlpha = Math.min(1, 2.5 * opacity);
      ctx.drawImage(state.edge, 0, 0, w, h);
      ctx.globalAlpha = 1;
    }
  }

  // ------------------------------------------------------------ one image

  function setDownloads(enabled) {
    $("download-mask").setAttribute("aria-disabled", enabled ? "false" : "true");
    $("download-overlay").disabled = !enabled;
  }

  // Forget the mask shown: the picture is drawn without it, under a label.
  function resetResult(label) {
    state.result = null;
    state.tint = state.edge = null;
    if (state.maskUrl) URL.revokeObjectURL(state.maskUrl);
    state.maskUrl = null;
    const a = $("download-mask");
    a.setAttribute("href", "#");
    a.removeAttribute("download");
    for (const id of ["fig-size", "fig-fraction", "fig-components", "fig-quality", "fig-gray", "fig-orientation", "fig-time"]) {
      $(id).textContent = "\u2013";
      delete $(id).dataset.value;
    }
    $("fig-quality").classList.remove("check");
    showNotices([]);
    veil(label);
    draw();
  }

  // A newer image or option: the requests under way are of no use any more.
  function supersede(label) {
    clearTimeout(state.timer);
    state.timer = null;
    state.generation++;
    if (state.controller) state.controller.abort();
    state.controller = null;
    resetResult(label);
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
    supersede("working\u2026");
    const generation = state.generation;
    const stale = () => generation !== state.generation;
    const controller = new AbortController();
    state.controller = controller;
    showError("");
    setStage("working");
    setDownloads(true);  // a click now downloads once the result is in
    status(`Reading ${file.name}\u2026`);
    const started = performance.now();
    try {
      if (!state.base || state.baseFile !== file) {
        const resp = await post("/v1/preview", file, controller.signal);
        if (!resp.ok) throw new Error(await errorText(resp, file));
        const size = JSON.parse(resp.headers.get("X-Unet-Result") || "null");
        const blob = await resp.blob();
        const [w, h] = size ? [size.width, size.height] : [0, 0];
        state.viewSize = size ? viewSizeOf(w, h) : null;
        const base = await decodePicture(blob, [w, h]);
        if (!size) state.viewSize = viewSizeOf(base.width, base.height);
        if (stale()) return;
        state.base = base;
        state.baseFile = file;
        draw();
      }
      status(`Segmenting ${file.name}\u2026`);
      const resp = await post(`/v1/segment?${query("png")}`, file, controller.signal);
      if (!resp.ok) throw new Error(await errorText(resp, file));
      const result = JSON.parse(resp.headers.get("X-Unet-Result"));
      const maskBlob = await resp.blob();
      if (stale()) return;
      status(`Drawing the mask of ${file.name}\u2026`);
      const layers = await buildLayers(maskBlob);
      if (stale()) return;
      state.tint = layers.tint;
      state.edge = layers.edge;
      state.result = result;
      veil("");
      draw();
      showFigures(result, performance.now() - started);
      state.maskUrl = URL.createObjectURL(maskBlob);
      const a = $("download-mask");
      a.href = state.maskUrl;
      a.download = `${stem(file.name)}_mask.png`;
      $("caption").textContent = file.name;
      showNotices(result.notes || []);
      status("Done.");
      setStage("done");
      // One column (a phone): the picture may be below the fold.
      if (NARROW.matches) $("stage").scrollIntoView({ block: "nearest", behavior: "smooth" });
      const wanted = state.wanted;
      state.wanted = null;
      if (wanted === "mask") a.click();
      else if (wanted === "overlay") downloadOverlay();
    } catch (e) {
      if (stale() || e.name === "AbortError") return;
      state.wanted = null;
      showError(e.message || String(e));
      status("");
      veil("no result");
      setDownloads(false);
      setStage("error");
    }
  }

  function pick(file, note = "") {
    if (!file) return;
    state.file = file;
    state.pickNote = note;
    state.base = null;
    state.baseFile = null;
    $("caption").textContent = file.name;
    segment();
  }

  // A download asked for before the result of the options shown is in (e.g. a click
  // right after typing an option, which commits it): it follows that result.
  function downloadLater(kind) {
    state.wanted = kind;
    if (state.timer) segment();  // an option change waiting to settle: send it now
    status(`The ${kind} will download when the result for these options is in\u2026`);
  }

  async function downloadOverlay() {
    const file = state.file;
    if (!file) return;
    if (!state.result) { downloadLater("overlay"); return; }
    const button = $("download-overlay");
    button.disabled = true;
    status("Drawing the overlay\u2026");
    try {
      const resp = await post(`/v1/segment?${query("overlay")}`, file);
      if (!resp.ok) throw new Error(await errorText(resp, file));
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
      button.disabled = !state.file || $("stage").dataset.state === "error";
    }
  }

  // ------------------------------------------------------------ wiring

  $("file").addEventListener("change", (ev) => pick(ev.target.files[0]));
  // Files dropped anywhere on the page (the browser would open them in its place).
  const drop = $("drop");
  const hasFiles = (ev) => ev.dataTransfer && Array.from(ev.dataTransfer.types || []).includes("Files");
  document.addEventListener("dragover", (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    ev.dataTransfer.dropEffect = "copy";
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", (ev) => {
    if (!ev.relatedTarget) drop.classList.remove("over");
  });
  document.addEventListener("drop", (ev) => {
    drop.classList.remove("over");
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    const files = Array.from(ev.dataTransfer.files);
    if (!files.length) return;
    const note = files.length > 1
      ? `${files.length} files dropped; showing the first (${files[0].name})`
      : "";
    pick(files[0], note);
  });
  $("opacity").addEventListener("input", () => {
    $("opacity-value").textContent = `${$("opacity").value}%`;
    draw();
  });
  for (const id of OPTIONS) {
    $(id).addEventListener("change", () => {
      if (id === "threshold" && $("threshold").value.trim() === "" && state.model) {
        // emptied (or not a number): back to the server's threshold, not sent
        $("threshold").value = String(state.model.prediction.threshold);
        state.touched.delete(id);
      } else {
        state.touched.add(id);
      }
      if (!state.file) return;
      // Steps of a spinner or quick clicks settle into one request.
      supersede("working\u2026");
      showError("");
      setStage("working");
      status("");
      state.timer = setTimeout(segment, SETTLE_MS);
    });
  }
  $("download-mask").addEventListener("click", (ev) => {
    if (state.result) return;  // the link holds the mask shown
    ev.preventDefault();
    if (state.file && $("stage").dataset.state !== "error") downloadLater("mask");
  });
  $("download-overlay").addEventListener("click", downloadOverlay);
  loadModel().catch((e) => showError(e.message || String(e)));
})();
