"""What `--compact` did, or why it refused: plain data in the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["GroupCompaction", "CompactionResult"]


@dataclass
class GroupCompaction:
    root: str
    channels: int
    removed: int
    dead: int
    constants_folded: int
    #: Zero channels kept so that the width stays a multiple of --round-to.
    kept_for_alignment: int = 0
    #: Silent channels that stay, and why.
    left: int = 0
    left_because: str | None = None


@dataclass
class CompactionResult:
    output: str | None
    #: Why nothing was written, when nothing was.
    refused: str | None = None
    saved_as: str | None = None
    load_code: str | None = None
    params_before: int = 0
    params_after: int = 0
    #: None when the MAC counter could not run the model (a note says why).
    macs_before: int | None = 0
    macs_after: int | None = 0
    max_abs_diff: float | None = None
    tolerance: float | None = None
    masks_folded: int = 0
    round_to: int | None = None
    groups: list[GroupCompaction] = field(default_factory=list)
    #: What the result leaves out, and why.
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompactionResult:
        groups = [GroupCompaction(**g) for g in data.get("groups", [])]
        return cls(**{**data, "groups": groups})
