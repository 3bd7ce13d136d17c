"""User errors: the problems a user can fix, reported by the CLI as one line each, exit code 2.

Every exception a user can cause (a bad recipe, a missing weights file, a run folder held by
another process, a critic that returned NaN) derives from :class:`UserError`. The CLI prints
``milr: <kind> error: <message>`` and exits 2; any other exception is a bug in milr or a plugin
and exits 1 with a one-line summary (the traceback only with ``--debug``). The split follows
LightningCLI / jsonargparse, which report configuration errors as a usage message rather than a
traceback. Kept free of heavy imports so ``milr list`` stays fast.
"""

from __future__ import annotations


def error_text(e: BaseException) -> str:
    """An exception's text for a one-line message (a KeyError's without the quotes its str() adds)."""
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e) or type(e).__name__


class UserError(Exception):
    """A problem the user can fix; ``kind`` names it in the one-line CLI message."""

    kind = "usage"

    def lines(self) -> list[str]:
        """The message as lines (several problems found at once give several lines)."""
        return str(self).splitlines() or [type(self).__name__]


class RunFolderError(UserError):
    """A run folder that cannot be used: missing, damaged, locked by another process, or mismatched."""

    kind = "run folder"


class NonFiniteError(UserError):
    """A critic was given, or returned, a value that is not a finite number."""

    kind = "non-finite"
