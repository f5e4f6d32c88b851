"""Time budgets: ``"10m"``, ``"90s"``, ``"1h"`` in seconds (Keras-free; the callback that
keeps training inside one is :class:`unet_lowered.planning.callbacks.TimeBudget`).
"""

from __future__ import annotations

import math
import re

from unet_lowered.errors import SettingError

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|m|min|h)?\s*$", re.IGNORECASE)


def parse_duration(value: object, setting: str = "time_budget") -> float:
    """Seconds of a duration: a number (seconds) or text like ``"90s"``, ``"10m"``, ``"1.5h"``.

    Raises:
        SettingError: Not a positive duration; the message shows the accepted forms.
    """
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer too large for a float (YAML allows it)
            seconds = math.inf
    else:
        match = _DURATION.match(str(value))
        seconds = None
        if match:
            seconds = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if seconds is None or not 0 < seconds < math.inf:  # YAML's .inf and .nan too
        flag = setting.replace("_", "-")
        raise SettingError(
            setting, f"{flag} must be a positive duration like 90s, 10m or 1h, got {value!r}"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """``600`` -> ``"10m"``, ``90`` -> ``"90s"``, ``5400`` -> ``"1.5h"``."""
    if seconds >= 3600 and seconds % 1800 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"
