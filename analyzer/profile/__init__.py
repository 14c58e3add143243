"""profile: measure the pruned model (and the dense one) and return plain data.

The measuring lives in `measure.py` (it imports torch); the data it returns in `result.py`
(plain dataclasses). This package imports neither until a name is asked for, so that
re-rendering a saved report (`analyze --load`) reads `result.py` without importing torch.
"""

from __future__ import annotations

from ..lazy import lazy_exports

#: Public name -> the module of this package that defines it.
_HOMES = {
    "ProfileOptions": "measure",
    "profile_models": "measure",
    "ProfileResult": "result",
    "LatencyStats": "result",
    "LayerProfile": "result",
    "FlopStats": "result",
    "MachineBalance": "result",
    "NvmlSummary": "result",
    "Environment": "result",
    "MeasureOptions": "timing",
    "Timer": "timing",
}

__all__ = list(_HOMES)

__getattr__ = lazy_exports(__name__, _HOMES)
