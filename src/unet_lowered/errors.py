"""The exception classes for user mistakes.

Library code raises :class:`UnetError` (a ``ValueError``) for anything the user
can fix: a missing file, a bad option, a corrupt image. The CLI prints its
message on one line and exits with status 1, never a traceback. Messages say
what was wrong, where (the file), and how to fix it.

Subclasses carry the structure a caller needs, so that nobody has to parse it
back out of the message: :class:`SettingError` names the setting at fault.
"""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters (an escape sequence in a
    file name, say) shown as escapes (``\\n``, ``\\x1b``), so it prints as one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)


class UnetError(ValueError):
    """A problem with the user's input or options, with a message that says how to fix it.

    The message is always one line: line breaks and other control characters (in a
    file name, say) are shown as escapes (``\\n``).
    """

    def __str__(self) -> str:
        return one_line(super().__str__())


class MissingExtraError(UnetError):
    """An optional dependency is not installed (pydicom for a DICOM file, say). Unlike a
    damaged file it says nothing about the input: the whole command stops with it
    rather than skipping the file."""


class SettingError(UnetError):
    """A bad value for one setting (``--loss``, ``epochs``, ...).

    Attributes:
        setting: The setting's name with underscores (``"image_size"``), as in a
            config file, so a caller can tell which file or flag the value came from.
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def listing(names: list[str] | tuple[str, ...], limit: int = 5) -> str:
    """``"a, b, c, ... 7 more"``: the first ``limit`` names, for one-line messages."""
    shown = ", ".join(str(n) for n in names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")
