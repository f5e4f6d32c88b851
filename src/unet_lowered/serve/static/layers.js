// The mask's layers for the unet serve page: a tint of each class and its outline.
// Loaded twice: by the page (maskLayers, for browsers without workers) and as a Web
// Worker, where it decodes the mask PNG and loops over its pixels off the main thread
// (a 7000 px mask took 1-2 s, during which the page froze).
"use strict";

const OUTLINE_OUTER = [0, 0, 0];
const OUTLINE_INNER = [255, 255, 255];

// values: RGBA bytes of the mask PNG (its gray value in the red channel); classOf: 256
// entries, mask value -> class (0 = background); palette: RGB per class, class 1 first.
// Each region is outlined as the overlay is (a line about min(w, h) / 300 px wide). A
// binary mask gets a black line outside a white one, which shows on any gray and to
// colour-blind eyes; classes keep their colour, so the outline tells them apart.
// Returns {tint, edge}: RGBA bytes of w x h pixels.
function maskLayers(values, w, h, classOf, palette, binary) {
  const tint = new Uint8ClampedArray(w * h * 4);
  const edge = new Uint8ClampedArray(w * h * 4);
  const t = Math.max(1, Math.round(Math.min(w, h) / 300));
  const at = (x, y) => values[(y * w + x) * 4];
  // differs(x, y, v, d): a pixel at distance d (4 directions) is not of value v
  const differs = (x, y, v, d) =>
    x < d || y < d || x >= w - d || y >= h - d ||
    at(x - d, y) !== v || at(x + d, y) !== v || at(x, y - d) !== v || at(x, y + d) !== v;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = at(x, y);
      const k = classOf[v];
      if (!k) continue;
      const colour = palette[(k - 1) % palette.length];
      const i = (y * w + x) * 4;
      tint[i] = colour[0]; tint[i + 1] = colour[1]; tint[i + 2] = colour[2]; tint[i + 3] = 255;
      let line = null;
      if (differs(x, y, v, t)) line = binary ? OUTLINE_OUTER : colour;
      else if (binary && differs(x, y, v, 2 * t)) line = OUTLINE_INNER;
      if (line) { edge[i] = line[0]; edge[i + 1] = line[1]; edge[i + 2] = line[2]; edge[i + 3] = 255; }
    }
  }
  return { tint, edge };
}

if (typeof WorkerGlobalScope !== "undefined" && self instanceof WorkerGlobalScope) {
  // {id, blob, classOf, palette, binary, size} -> {id, tint, edge} (ImageBitmaps of
  // size [width, height], the picture's as drawn) or {id, error}
  self.onmessage = async (ev) => {
    const { id, blob, classOf, palette, binary, size } = ev.data;
    try {
      const mask = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
      const w = mask.width, h = mask.height;
      const ctx = new OffscreenCanvas(w, h).getContext("2d", { willReadFrequently: true });
      ctx.drawImage(mask, 0, 0);
      mask.close();
      const { tint, edge } = maskLayers(ctx.getImageData(0, 0, w, h).data, w, h, classOf, palette, binary);
      const [vw, vh] = size || [w, h];
      const bitmap = (data) => (vw === w && vh === h
        ? createImageBitmap(new ImageData(data, w, h))
        : createImageBitmap(new ImageData(data, w, h), { resizeWidth: vw, resizeHeight: vh, resizeQuality: "pixelated" }));
      const layers = { id, tint: await bitmap(tint), edge: await bitmap(edge) };
      self.postMessage(layers, [layers.tint, layers.edge]);
    } catch (e) {
      self.postMessage({ id, error: String((e && e.message) || e) });
    }
  };
}
