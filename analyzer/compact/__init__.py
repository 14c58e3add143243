"""compact: turn zeroed channels and pruning masks into real channel removal.

The compaction lives in `compaction.py` (it imports torch and torch-pruning); what it
returns in `result.py` (plain dataclasses). This package imports neither until a name is
asked for, so that re-rendering a saved report (`analyze --load`) reads `result.py`
without importing torch.
"""

from __future__ import annotations

from ..lazy import lazy_exports

#: Public name -> the module of this package that defines it.
_HOMES = {
    "compact": "compaction",
    "VERIFY_TOLERANCE": "compaction",
    "CompactionResult": "result",
    "GroupCompaction": "result",
}

__all__ = list(_HOMES)

__getattr__ = lazy_exports(__name__, _HOMES)
