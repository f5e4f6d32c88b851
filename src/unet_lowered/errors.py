"""The one exception class for user mistakes.

Library code raises :class:`UnetError` (a ``ValueError``) for anything the user
can fix: a missing file, a bad option, a corrupt image. The CLI prints its
message on one line and exits with status 1, never a traceback. Messages say
what was wrong, where (the file), and how to fix it.
"""

from __future__ import annotations


class UnetError(ValueError):
    """A problem with the user's input or options, with a message that says how to fix it."""
