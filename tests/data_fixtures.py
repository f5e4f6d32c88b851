"""Small data folders the data and training tests make: image/mask pairs and ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unet_lowered.io.images import write_png


def make_pair(
    root: Path,
    ident: str,
    size: tuple[int, int] = (24, 32),
    rgb: bool = False,
    mask_values: tuple[int, ...] = (0, 255),
    mask_name: str | None = None,
    seed: int = 0,
) -> None:
    """Write images/<id>.png and masks/<mask_name or id>.png: a gradient and a box."""
    h, w = size
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
    mask = np.full((h, w), mask_values[0], np.uint8)
    for k, value in enumerate(mask_values[1:], 1):
        mask[k * h // 8 : (k + 2) * h // 8, w // 4 : 3 * w // 4] = value
    write_png(root / "images" / f"{ident}.png", image)
    write_png(root / "masks" / f"{mask_name or ident}.png", mask)


def make_prepared(tmp: Path, ids: list[str], meta: dict | None = None, **kwargs: object) -> Path:
    root = tmp / "prepared"
    for k, ident in enumerate(ids):
        make_pair(root / "train", ident, seed=k, **kwargs)
    if meta is not None:  # a dataset.json as `unet prepare` writes it, with `meta` on top
        items = [{"id": i, "split": "train"} for i in ids]
        base = {
            "format": "unet-lowered-dataset",
            "version": 1,
            "mode": "binary",
            "num_classes": 1,
            "label_values": None,
            "items": items,
        }
        (root / "dataset.json").write_text(json.dumps({**base, **meta}))
    return root


def ids_of(n: int) -> list[str]:
    return [f"case{k:03d}" for k in range(n)]


def stub_weight(mask: np.ndarray) -> np.ndarray:
    """Stands in for weightmap.weight_map: a weight that encodes the label."""
    return 1.0 + 9.0 * mask.astype(np.float32)
