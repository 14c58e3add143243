"""The one exception hierarchy of the tool.

Only the CLI turns these into a message and an exit code. Messages are one line and
say what was found and what was expected.
"""

from __future__ import annotations

__all__ = [
    "AnalyzerError",
    "InputError",
    "UsageError",
    "BuildError",
    "NotRunnableError",
]


class AnalyzerError(Exception):
    """A failure the user can act on; printed as one line by the CLI."""

    #: Exit code of the CLI when this error stops an analysis (DESIGN.md: 2).
    exit_code = 2


class InputError(AnalyzerError):
    """The input file cannot be read as a checkpoint."""


class UsageError(AnalyzerError):
    """Options that contradict each other or name something that does not exist."""


class BuildError(AnalyzerError):
    """A runnable model could not be built from the checkpoint and the options."""


class NotRunnableError(AnalyzerError):
    """A module stood in by a placeholder was asked to run."""
