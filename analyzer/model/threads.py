"""How many intra-op threads torch uses while the analyzer runs a model.

The analysis runs models only to learn shapes, couplings and what channels carry, never
for speed, so it runs them on one thread: on a machine where other processes want the
cores (CI runners, laptops, shared servers), torch's OpenMP threads spin-wait on peers
that were descheduled, and a forward pass costs several times the CPU of a single-thread
one (8.5x was measured on a shared 2-core machine). The thread count is restored after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

__all__ = ["torch_threads", "single_threaded", "ANALYSIS_THREADS"]

#: Intra-op threads of every model run of the analysis (trace, probes, dependency graph); the report says it.
ANALYSIS_THREADS = 1


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch.set_num_threads(count) inside the block, the previous count restored after."""
    before = torch.get_num_threads()
    if count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def single_threaded() -> AbstractContextManager[None]:
    return torch_threads(ANALYSIS_THREADS)
