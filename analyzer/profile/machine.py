"""Is the machine oversubscribed while we time? Load average against usable cores, and CPU
time against wall time of the timed loop.

On a machine where other processes want the cores, a timed call can wait for a core:
wall-clock samples then measure the machine, not the model, and with several intra-op
threads every parallel region waits for its slowest, descheduled thread. Both signals
are read here from sources that tests replace with fakes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MachineLoad", "usable_cores", "load_average", "observe_load", "CPU_SHARE_FLOOR", "LOAD_SLACK"]

#: The timed loop is oversubscribed when its threads held a core less than this share of its wall time...
CPU_SHARE_FLOOR = 0.9
#: ...or when the 1-minute load average exceeds the usable cores by more than this.
LOAD_SLACK = 0.5


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average (runnable processes, ours included); None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@dataclass
class MachineLoad:
    cores: int
    #: Intra-op threads the timed loop ran with.
    threads: int
    load_before: float | None
    load_after: float | None
    #: CPU seconds of the timed loop's threads / (its wall seconds × threads); None when not measured (GPU).
    cpu_share: float | None

    @property
    def load(self) -> float | None:
        known = [v for v in (self.load_before, self.load_after) if v is not None]
        return max(known) if known else None

    @property
    def oversubscribed(self) -> bool:
        load = self.load
        return (self.cpu_share is not None and self.cpu_share < CPU_SHARE_FLOOR) or (
            load is not None and load > self.cores + LOAD_SLACK
        )

    def describe(self) -> str:
        """One line: what was seen, and whether it counts as oversubscribed."""
        parts = []
        if self.load is not None:
            parts.append(f"load average {self.load:.1f} on {self.cores} usable core{'s' if self.cores != 1 else ''}")
        else:
            parts.append(f"{self.cores} usable core{'s' if self.cores != 1 else ''}")
        if self.cpu_share is not None:
            held = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
            parts.append(f"the timed loop's {held} held a core {self.cpu_share:.0%} of its wall time")
        verdict = "oversubscribed" if self.oversubscribed else "not oversubscribed"
        return f"machine {verdict}: " + ", ".join(parts)


def observe_load(
    threads: int,
    cpu_s: float | None,
    wall_s: float,
    load_before: float | None,
    load_after: Callable[[], float | None] = load_average,
    cores: Callable[[], int] = usable_cores,
) -> MachineLoad:
    """The load seen around a timed loop that took `cpu_s` CPU and `wall_s` wall seconds."""
    share = cpu_s / (wall_s * max(threads, 1)) if cpu_s is not None and wall_s > 0 else None
    return MachineLoad(cores=cores(), threads=threads, load_before=load_before, load_after=load_after(), cpu_share=share)
