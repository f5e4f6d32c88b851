"""Checks of a data set's masks before training: the causes of "all-black predictions".

:func:`mask_warnings` flags empty, nearly empty and nearly full masks and a
foreground too rare or too common on average; ``unet train`` prints them before
the first epoch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from unet_lowered.dataset.masks import read_mask
from unet_lowered.dataset.pairs import PreparedData
from unet_lowered.errors import listing as _listing

EMPTY_FRACTION = 0.001
"""Masks with foreground below this fraction (0.1%) count as nearly empty."""

FULL_FRACTION = 0.95
"""Masks with foreground above this fraction count as nearly all foreground."""


def foreground_fractions(source: Any, ids: Iterable[str] | None = None) -> dict[str, float]:
    """Foreground (non-zero) fraction of each mask.

    Args:
        source: Prepared data (masks are decoded at full size), a ready mapping
            ``{id: fraction}``, or anything with such a ``foreground`` mapping (a
            :class:`~unet_lowered.training.cache.SampleCache`: fractions at its size).
        ids: Restrict to these ids (default: all of ``source``).

    Returns:
        ``{id: fraction in [0, 1]}``.
    """
    if isinstance(source, PreparedData):
        wanted = list(source.ids if ids is None else ids)

        def fraction(ident: str) -> float:
            mask = read_mask(source.masks[ident])
            return float(np.count_nonzero(mask)) / mask.size

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            table: Mapping[str, float] = dict(zip(wanted, pool.map(fraction, wanted), strict=True))
    elif isinstance(source, Mapping):
        table = source
    else:
        table = source.foreground
    if ids is None:
        return dict(table)
    return {i: table[i] for i in ids}


def mask_warnings(
    source: Any,
    ids: Iterable[str] | None = None,
    empty_below: float = EMPTY_FRACTION,
    full_above: float = FULL_FRACTION,
    loss: str | None = None,
) -> list[str]:
    """Warnings about masks that lead to "the predictions are all black".

    Flags empty and nearly empty masks, nearly all-foreground masks (inverted
    masks?), and a foreground too rare or too common on average.

    Args:
        source: See :func:`foreground_fractions`.
        ids: The ids to check (e.g. the training split); default all.
        empty_below: Below this fraction a mask counts as nearly empty.
        full_above: Above this fraction a mask counts as nearly all foreground.
        loss: The loss the training uses; the advice against plain ``bce`` for rare
            foreground is given only when it is ``bce`` (or not known).

    Returns:
        One line per problem (empty when all is well).
    """
    fractions = foreground_fractions(source, ids)
    if not fractions:
        return []
    n = len(fractions)
    names = sorted(fractions)
    empty = [i for i in names if fractions[i] == 0.0]
    tiny = [i for i in names if 0.0 < fractions[i] < empty_below]
    full = [i for i in names if fractions[i] > full_above]
    mean = sum(fractions.values()) / n
    out = []
    if len(empty) == n:
        return [
            f"all {n} masks are empty: the model can only learn to predict background "
            "(all-black predictions); check the mask files and which values are foreground"
        ]
    if empty:
        out.append(
            f"{len(empty)} of {n} masks are empty ({_listing(empty)}); fine if those images "
            "truly show no object, otherwise check the masks"
        )
    if tiny:
        out.append(
            f"{len(tiny)} of {n} masks have less than {empty_below:.1%} foreground "
            f"({_listing(tiny)})"
        )
    if full:
        out.append(
            f"{len(full)} of {n} masks are more than {full_above:.0%} foreground "
            f"({_listing(full)}); are they inverted? foreground must be the non-zero value"
        )
    if mean < 0.01 and loss in (None, "bce"):
        out.append(
            f"foreground covers only {mean:.2%} of the pixels on average: with bce the model "
            "may learn to predict all background; prefer bce+dice, dice or focal"
        )
    elif mean > 0.75:
        out.append(
            f"foreground covers {mean:.0%} of the pixels on average; check that the masks "
            "are not inverted (foreground must be the non-zero value)"
        )
    return out
