"""The profile and compaction sections of a report as their dataclasses, without torch.

`analyzer.profile.result` and `analyzer.compact.result` are plain dataclasses, and their
packages import nothing else until asked (analyzer/lazy.py): re-rendering a saved report
(`analyze --load`) reads them without importing torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["profile_from_dict", "compaction_from_dict"]


def profile_from_dict(data: dict[str, Any]) -> Any:
    """The `ProfileResult` of a report's `profile` section."""
    from ..profile.result import ProfileResult

    return ProfileResult.from_dict(data)


def compaction_from_dict(data: dict[str, Any]) -> Any:
    """The `CompactionResult` of a report's `compaction` section."""
    from ..compact.result import CompactionResult

    return CompactionResult.from_dict(data)
