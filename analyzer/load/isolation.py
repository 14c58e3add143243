"""Run a step over untrusted bytes in a child process that carries its own limits.

Reading a crafted file may ask for terabytes, spin for hours or crash a C reader. Doing
it in a forked child keeps all of that out of the caller's process: the child sets its
own address-space and CPU-time limits (never the caller's signal handlers, timers or
rlimits, which a test suite or a service relies on), runs the step, and sends back a
small JSON result through a pipe — never a pickle. A child that runs out of memory or
CPU time, or dies on a signal, becomes a `BoundedRunFailed` the caller words for its user.

fork, not spawn: torch is already imported, so the child starts in milliseconds and
shares the parent's pages until it writes to them. Where fork does not exist (Windows),
`isolation_available()` is False and callers run the step in-process and say so.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import json
import math
import os
import select
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import errors

__all__ = [
    "ChildLimits",
    "BoundedRunFailed",
    "LimitExceeded",
    "ChildCrashed",
    "ChildRaised",
    "isolation_available",
    "run_bounded",
]

#: Exit statuses of the child: it sent a result / it could not compute one.
_EXIT_OK, _EXIT_FAILED = 0, 3
#: Bytes of the child's stderr kept for --debug.
_STDERR_TAIL = 4000
_IN_CHILD = False
#: How torch's CPU allocator says that an allocation was refused.
_ALLOCATION_FAILED = "can't allocate memory"


@dataclass(frozen=True)
class ChildLimits:
    #: How far the child's address space may grow beyond what it inherited (None: no limit).
    memory_bytes: int | None
    #: CPU seconds (user + system, all threads) the child may use (None: no limit). CPU time,
    #: not wall-clock: a busy machine slows the child down without using up its budget.
    cpu_seconds: float | None
    #: Wall-clock seconds after which a child that is not finishing is killed (a deadlock,
    #: a disk that stopped answering); None: derived from cpu_seconds, generously.
    wall_seconds: float | None = None

    def wall_backstop(self) -> float | None:
        if self.wall_seconds is not None:
            return self.wall_seconds
        if self.cpu_seconds is None:
            return None
        return 60.0 + 5.0 * self.cpu_seconds


class BoundedRunFailed(Exception):
    """The step did not return a result; subclasses say why."""

    def __init__(self, message: str, child_stderr: str = "") -> None:
        super().__init__(message)
        self.child_stderr = child_stderr


class LimitExceeded(BoundedRunFailed):
    """The child ran out of its memory or CPU budget (or of wall-clock time as a last resort)."""

    def __init__(self, resource: str, limits: ChildLimits, child_stderr: str = "") -> None:
        super().__init__(f"the child exceeded its {resource} limit", child_stderr)
        #: "memory", "cpu" or "wall".
        self.resource = resource
        self.limits = limits


class ChildCrashed(BoundedRunFailed):
    """The child died on a signal that is not a limit (SIGSEGV in a C reader, SIGBUS, ...)."""

    def __init__(self, signal_name: str, child_stderr: str = "") -> None:
        super().__init__(f"the child died on {signal_name}", child_stderr)
        self.signal_name = signal_name


class ChildRaised(BoundedRunFailed):
    """The step raised an exception that is not one of ours (a bug, or an unforeseen input)."""

    def __init__(self, type_name: str, message: str, child_traceback: str) -> None:
        super().__init__(f"{type_name}: {message}", child_traceback)
        self.type_name = type_name
        self.message = message


def isolation_available() -> bool:
    """Whether steps can run in a forked child here (Linux, macOS and other POSIX systems)."""
    return hasattr(os, "fork") and hasattr(os, "waitpid") and sys.platform != "emscripten"


def run_bounded(step: Callable[[], Any], limits: ChildLimits) -> Any:
    """`step()`'s JSON-able result, computed in a forked child under `limits`.

    An AnalyzerError raised by the step is raised again here (same class, same message);
    anything else that keeps the step from returning raises a BoundedRunFailed.
    """
    if _IN_CHILD:
        return step()  # already bounded by the enclosing child's limits
    read_end, write_end = os.pipe()
    stderr_file = tempfile.TemporaryFile()
    try:
        pid = _fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            os.close(read_end)
            _child(step, limits, write_end, stderr_file.fileno())
        os.close(write_end)
        write_end = -1
        payload, status, cpu_used = _collect(pid, read_end, limits)
        return _result(payload, status, cpu_used, limits, _tail(stderr_file))
    finally:
        if write_end >= 0:
            os.close(write_end)
        os.close(read_end)
        stderr_file.close()


def _fork() -> int:
    if sys.version_info < (3, 12):
        return os.fork()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process with threads (torch's OpenMP pool):
        # the child only runs this module's step, single-threaded, and exits with _exit.
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        return os.fork()


# -- the child ----------------------------------------------------------------------------


def _child(step: Callable[[], Any], limits: ChildLimits, result_fd: int, stderr_fd: int) -> None:  # pragma: no cover
    global _IN_CHILD
    _IN_CHILD = True
    code = _EXIT_FAILED
    try:
        # Whatever the child prints (a C reader's complaint, faulthandler's dump) goes to a
        # file the parent keeps for --debug, never into the caller's terminal or captures.
        os.dup2(stderr_fd, 1)
        os.dup2(stderr_fd, 2)
        faulthandler.disable()  # it may write to a copy of the caller's stderr (pytest's does)
        warnings.simplefilter("ignore")  # nobody reads them, and writing takes the stream's lock
        # The inherited heap stays out of the collector's passes: they would cost time and
        # copy every page they touch (reference counts live in the objects).
        gc.freeze()
        _set_own_limits(limits)
        _single_threaded()
        outcome = _outcome(step)
        code = _EXIT_OK if "ok" in outcome else _EXIT_FAILED
        try:
            data = json.dumps(outcome, allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            data = json.dumps({"raised": type(e).__name__, "message": f"result not JSON: {e}"[:500], "traceback": ""}).encode()
            code = _EXIT_FAILED
        _write_all(result_fd, data)
    except MemoryError:
        code = _EXIT_FAILED
    finally:
        os._exit(code)


def _outcome(step: Callable[[], Any]) -> dict[str, Any]:  # pragma: no cover - child only
    try:
        return {"ok": step()}
    except errors.AnalyzerError as e:
        # The nearest class of the one hierarchy (a loader's private subclass maps to its parent).
        public = next(c for c in type(e).__mro__ if getattr(errors, c.__name__, None) is c)
        return {"analyzer_error": public.__name__, "message": str(e)}
    except MemoryError:
        return {"memory_error": True}
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
        if isinstance(e, RuntimeError) and _ALLOCATION_FAILED in str(e):
            return {"memory_error": True}  # torch's allocator refused: the address-space limit
        return {"raised": type(e).__name__, "message": str(e)[:2000], "traceback": traceback.format_exc()[-_STDERR_TAIL:]}


def _set_own_limits(limits: ChildLimits) -> None:  # pragma: no cover - child only
    import resource

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a killed child leaves no core file behind
    if limits.memory_bytes is not None:
        _lower_limit(resource, resource.RLIMIT_AS, _address_space() + limits.memory_bytes)
    if limits.cpu_seconds is not None:
        # SIGPROF (CPU time of every thread, to the microsecond) ends the child at the budget;
        # RLIMIT_CPU (whole seconds) is the backstop should the timer signal be blocked.
        with contextlib.suppress(ValueError, OSError):  # a profiler's handler must not catch it
            signal.signal(signal.SIGPROF, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_PROF, max(limits.cpu_seconds, 1e-4))
        backstop = math.ceil(limits.cpu_seconds) + 2
        _lower_limit(resource, resource.RLIMIT_CPU, backstop, hard=backstop + 2)


def _lower_limit(resource: Any, which: int, soft: int, hard: int | None = None) -> None:  # pragma: no cover
    old_soft, old_hard = resource.getrlimit(which)
    if old_hard != resource.RLIM_INFINITY:
        soft = min(soft, old_hard)
        hard = old_hard if hard is None else min(hard, old_hard)
    elif hard is None:
        hard = old_hard
    if old_soft != resource.RLIM_INFINITY and old_soft <= soft:
        return  # an existing, tighter limit already applies
    with contextlib.suppress(ValueError, OSError):  # macOS does not enforce RLIMIT_AS
        resource.setrlimit(which, (soft, hard))


def _single_threaded() -> None:  # pragma: no cover - child only
    # The parent's OpenMP workers do not exist in the child; one thread also keeps the
    # child's CPU time equal to the work done.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _address_space() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _write_all(fd: int, data: bytes) -> None:  # pragma: no cover - child only
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the parent ---------------------------------------------------------------------------


def _collect(pid: int, read_end: int, limits: ChildLimits) -> tuple[bytes, int, float]:
    """Everything the child wrote, its wait status and the CPU seconds it used; the child
    is reaped whatever happens."""
    chunks: list[bytes] = []
    backstop = limits.wall_backstop()
    deadline = None if backstop is None else time.monotonic() + backstop
    reaped = False
    try:
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([read_end], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                _wait(pid)
                reaped = True
                raise LimitExceeded("wall", limits)
            chunk = os.read(read_end, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        status, cpu_used = _wait(pid)
        reaped = True
        return b"".join(chunks), status, cpu_used
    finally:
        if not reaped:  # KeyboardInterrupt or another error while waiting
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)


def _wait(pid: int) -> tuple[int, float]:
    """The child's wait status and CPU seconds (user + system)."""
    if hasattr(os, "wait4"):
        _, status, usage = os.wait4(pid, 0)
        return status, usage.ru_utime + usage.ru_stime
    _, status = os.waitpid(pid, 0)
    return status, 0.0


def _result(payload: bytes, status: int, cpu_used: float, limits: ChildLimits, stderr: str) -> Any:
    if os.WIFSIGNALED(status):
        raise _death(os.WTERMSIG(status), cpu_used, limits, stderr)
    try:
        outcome = json.loads(payload) if payload else {}
    except ValueError:
        outcome = {}
    if "ok" in outcome:
        return outcome["ok"]
    if "analyzer_error" in outcome:
        raise _analyzer_error(outcome["analyzer_error"], outcome.get("message", ""))
    if outcome.get("memory_error"):
        raise LimitExceeded("memory", limits, stderr)
    if "raised" in outcome:
        raise ChildRaised(outcome["raised"], outcome.get("message", ""), outcome.get("traceback", "") or stderr)
    # Exited without a result: the allocator gave up (std::bad_alloc → abort is a signal;
    # an _exit from C code is this), or the pipe could not be written.
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    raise ChildCrashed(f"exit status {code}", stderr)


def _death(signum: int, cpu_used: float, limits: ChildLimits, stderr: str) -> BoundedRunFailed:
    # SIGKILL also ends a child past RLIMIT_CPU's hard limit: its CPU time tells.
    out_of_cpu = limits.cpu_seconds is not None and cpu_used >= limits.cpu_seconds
    if signum in (signal.SIGPROF, signal.SIGXCPU) or (signum == signal.SIGKILL and out_of_cpu):
        return LimitExceeded("cpu", limits, stderr)
    if signum == signal.SIGKILL or (signum == signal.SIGABRT and "bad_alloc" in stderr):
        # The kernel's OOM killer, or C++ aborting on an allocation the limit refused.
        return LimitExceeded("memory", limits, stderr)
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return ChildCrashed(name, stderr)


def _analyzer_error(type_name: str, message: str) -> errors.AnalyzerError:
    cls = getattr(errors, type_name, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.AnalyzerError)):
        cls = errors.AnalyzerError
    return cls(message)


def _tail(stderr_file: Any) -> str:
    try:
        stderr_file.seek(0, os.SEEK_END)
        size = stderr_file.tell()
        stderr_file.seek(max(0, size - _STDERR_TAIL))
        return stderr_file.read().decode("utf-8", "replace")
    except OSError:
        return ""
