"""Limits the loader sets on itself while it turns a file into objects.

A checkpoint can only hold as many bytes of tensors as the file has; a pickle that asks
for more (a `torch.Tensor(10**10)` REDUCE, a storage that claims terabytes) is lying.
While a file is read, the process's address space may grow by a budget derived from the
file's size, and the read may last a bounded time; past either limit the load stops
with one clear line instead of swapping the machine to death or hanging.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import InputError

__all__ = ["Limits", "limits_for", "enforced", "LoadTimeout"]

_GB = 1 << 30


class LoadTimeout(InputError):
    """Reading the file took longer than its time limit."""


@dataclass(frozen=True)
class Limits:
    #: Bytes the address space may grow by while loading (None: no limit).
    memory_bytes: int | None
    #: Seconds the load may take (None: no limit).
    seconds: float | None


def limits_for(file_size: int, memory_bytes: int | None = None, seconds: float | None = None) -> Limits:
    """Defaults: room for the file mapped once and copied once, plus 2 GB; a minute plus 30 s per GB."""
    return Limits(
        memory_bytes=memory_bytes if memory_bytes is not None else 2 * file_size + 2 * _GB,
        seconds=seconds if seconds is not None else 60 + 30 * file_size / _GB,
    )


@contextmanager
def enforced(limits: Limits, path: object) -> Iterator[None]:
    with _address_space(limits.memory_bytes, path), _deadline(limits.seconds, path):
        yield


@contextmanager
def _address_space(budget: int | None, path: object) -> Iterator[None]:
    try:
        import resource
    except ImportError:  # not on this platform: the time limit still applies
        yield
        return
    if budget is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    ceiling = _current_address_space() + budget
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    if soft != resource.RLIM_INFINITY and soft <= ceiling:
        yield  # an existing, tighter limit already applies
        return
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    try:
        yield
    except MemoryError as e:
        raise InputError(f"{path}: reading it needs more than {budget / _GB:.1f} GB beyond the file's own size; refused") from e
    except RuntimeError as e:
        if "allocate" in str(e) or "alloc" in str(e).lower():
            raise InputError(f"{path}: reading it needs more than {budget / _GB:.1f} GB beyond the file's own size; refused") from e
        raise
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _current_address_space() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            pages = int(f.read().split()[0])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


@contextmanager
def _deadline(seconds: float | None, path: object) -> Iterator[None]:
    if seconds is None or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise LoadTimeout(f"{path}: reading it took longer than {seconds:.3g} s; refused (a crafted file, or a very slow disk)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
