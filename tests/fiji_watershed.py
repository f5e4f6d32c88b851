"""Fiji's ``WatershedTransform2D.apply`` (Trainable_Segmentation, Vincent-Soille flooding)
on a binary map, ported line by line as the reference for ``metrics.thin_borders``.

Kept slow and literal on purpose: ``[x][y]`` arrays, the pixel list sorted by value and
then by its x-major sequence number, neighbours left, up, right, down, and the
``flag`` that survives from one pixel to the next, exactly as in the Java.
"""

from __future__ import annotations

from collections import deque

import numpy as np

MASK, WSHED, INIT, INQUEUE = -2, 0, -1, -3


def fiji_watershed(cells: np.ndarray) -> np.ndarray:
    """Labels of the evaluation script's thinning of ``cells`` (bool ``(H, W)``): the
    script's input is 255 on the predicted membrane and 0 in the cells."""
    height, width = cells.shape
    value = np.where(cells, 0, 255)
    lab = np.full((width, height), INIT, np.int64)
    order = [(x, y) for x in range(width) for y in range(height)]
    current, flag = 0, False

    def neighbours(x: int, y: int) -> list[tuple[int, int]]:
        around = [(x - 1, y), (x, y - 1), (x + 1, y), (x, y + 1)]
        return [(u, v) for u, v in around if 0 <= u < width and 0 <= v < height]

    for h in sorted(set(value.ravel().tolist())):
        level = [(x, y) for x, y in order if value[y, x] == h]
        fifo: deque[tuple[int, int]] = deque()
        for x, y in level:
            lab[x, y] = MASK
            for u, v in neighbours(x, y):
                if lab[u, v] >= WSHED:
                    fifo.append((x, y))
                    lab[x, y] = INQUEUE
                    break
        while fifo:
            i, j = fifo.popleft()
            for u, v in neighbours(i, j):
                if lab[u, v] > 0:
                    if lab[i, j] == INQUEUE or (lab[i, j] == WSHED and flag):
                        lab[i, j] = lab[u, v]
                    elif lab[i, j] > 0 and lab[i, j] != lab[u, v]:
                        lab[i, j] = WSHED
                        flag = False
                elif lab[u, v] == WSHED:
                    if lab[i, j] == INQUEUE:
                        lab[i, j] = WSHED
                        flag = True
                elif lab[u, v] == MASK:
                    lab[u, v] = INQUEUE
                    fifo.append((u, v))
        for x, y in level:
            if lab[x, y] == MASK:  # a new minimum
                current += 1
                fifo.append((x, y))
                lab[x, y] = current
                while fifo:
                    a, b = fifo.popleft()
                    for u, v in neighbours(a, b):
                        if lab[u, v] == MASK:
                            fifo.append((u, v))
                            lab[u, v] = current
    out = lab.T.copy()
    out[out == INIT] = 0
    return out
