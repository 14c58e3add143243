"""`analyze`: arguments → api → renderer → exit code. The only place that prints or exits.

Everything the user typed is checked before any work starts (and before torch is
imported: `--help`, `--version`, `--load` and argument errors never import it): flags,
their combinations, the configuration table, every output path against every input.
Every failure is one line on stderr and exit 2; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import DISTRIBUTION, __version__
from .errors import AnalyzerError, InputError, UsageError

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FINDINGS", "EXIT_CANNOT_ANALYSE"]

EXIT_OK, EXIT_FINDINGS, EXIT_CANNOT_ANALYSE = 0, 1, 2
EXIT_INTERRUPTED = 130

FAIL_ON = ("error", "warning", "info", "never")
OUTPUT_FORMATS = ("rich", "json", "github", "sarif", "markdown", "junit", "html")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class _Parser(argparse.ArgumentParser):
    """argparse that raises our UsageError (one line, exit 2) instead of printing usage."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{message} (analyze --help lists the options)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="analyze",
        allow_abbrev=False,
        description="Diagnose a pruned PyTorch checkpoint: zeros vs removed channels, broken residuals "
        "and heads, failed loads, and why pruning did not make it faster.",
        epilog=f"Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 the file could not be analysed "
        f"(or a check failed, or the arguments are wrong). Configuration: [tool.{DISTRIBUTION}] in pyproject.toml.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="checkpoint files (.pth, .pt, .bin, .safetensors, TorchScript) or save_pretrained folders / shard indexes; several make a comparison")
    parser.add_argument("--demo", action="store_true", help="make the classic broken checkpoints in a temp folder (or --demo-dir) and analyse each")
    parser.add_argument("--demo-dir", metavar="DIR", help="with --demo: make and keep the demo checkpoints in DIR, so that their fix code runs")
    parser.add_argument("--load", metavar="REPORT.JSON", help="re-render a saved JSON report without re-analysing")
    parser.add_argument("--fail-on", choices=FAIL_ON, help="exit 1 when findings reach this severity (default: error)")
    model = parser.add_argument_group("model")
    model.add_argument("--arch", metavar="PKG.MODULE:FACTORY", help="dense architecture to fit the checkpoint to (imports that code), e.g. analyzer.zoo:resnet50")
    model.add_argument("--baseline", metavar="DENSE.PTH", help="dense checkpoint to compare widths (and, profiled, speed) with")
    model.add_argument("--input-shape", metavar="N,C,H,W", help="example input for running the model (batch,sequence for token models; default: inferred from the model)")
    model.add_argument("--input", action="append", default=[], metavar="NAME=SHAPE", help="a named input of the model's forward, e.g. --input input_ids=1,16 --input attention_mask=1,16 (repeatable)")
    prof = parser.add_argument_group("profiling")
    prof.add_argument("--profile", action="store_true", help="measure latency, FLOPs, per-layer time (and NVML on a GPU); dense vs pruned with --baseline/--arch")
    prof.add_argument("--device", metavar="DEV", help="with --profile: auto (CUDA when available; the default), cpu, cuda, cuda:N")
    prof.add_argument("--batch", metavar="B[,B...]", help="with --profile: batch sizes to time, e.g. 1,8,32 (default 1)")
    comp = parser.add_argument_group("compact")
    comp.add_argument("--compact", metavar="OUT.PTH", help="write a copy with zeroed channels removed and masks folded (outputs verified equal)")
    comp.add_argument("--round-to", type=int, metavar="N", help="with --compact: keep a few zero channels so widths stay multiples of N")
    load = parser.add_argument_group("loading")
    load.add_argument("--trust", action="store_true", help="unpickle fully: runs code from the file (only for files you made)")
    load.add_argument("--allow-module", action="append", default=[], metavar="PKG", help="import PKG and rebuild its nn.Module classes from the pickle (repeatable)")
    load.add_argument("--key", metavar="KEY", help="entry of a training checkpoint holding the weights (e.g. ema, model.state_dict)")
    scan = parser.add_argument_group("analysis")
    scan.add_argument("--zero-tol", type=float, metavar="TOL", help="count |x| <= TOL as zero (default: exactly 0)")
    scan.add_argument("--select", metavar="KIND,...", help="report only these finding kinds")
    scan.add_argument("--ignore", metavar="KIND,...", help="never report these finding kinds")
    scan.add_argument("--baseline-report", metavar="OLD.JSON", help="a saved JSON report: its findings (same kind and modules) are known, only new ones are reported and fail")
    ci = parser.add_argument_group("configuration")
    ci.add_argument("--config", metavar="PYPROJECT.TOML", help=f"read [tool.{DISTRIBUTION}] from this file instead of the nearest pyproject.toml")
    ci.add_argument("--isolated", action="store_true", help="ignore every pyproject.toml")
    out = parser.add_argument_group("output")
    out.add_argument("--output-format", choices=OUTPUT_FORMATS, help="what goes to stdout (or --output-file): rich (default), json, github, sarif, markdown, junit, html")
    out.add_argument("--output-file", metavar="FILE", help="write the --output-format output to FILE instead of stdout")
    out.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE ('-' for stdout, instead of the terminal report)")
    out.add_argument("--export-html", metavar="FILE", help="also write the HTML report (charts, collapsible findings) to FILE")
    out.add_argument("--export-svg", metavar="FILE", help="also save the terminal report as SVG")
    out.add_argument("--all-layers", action="store_true", default=None, help="show every layer in the module tree")
    out.add_argument("--quiet", "-q", action="store_true", help="one summary line instead of the terminal report; no progress bars")
    out.add_argument("--debug", action="store_true", help="show tracebacks")
    out.add_argument("--version", action="version", version=f"analyze ({DISTRIBUTION}) {__version__}")
    return parser


@dataclass
class Settings:
    """The arguments, merged with the configuration table and checked."""

    paths: list[Path]
    fail_on: str = "error"
    output_format: str = "rich"
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    arch: str | None = None
    #: A shape, or {name: shape} for named inputs (--input NAME=SHAPE).
    input_shape: tuple[int, ...] | dict[str, tuple[int, ...]] | None = None
    zero_tol: float = 0.0
    all_layers: bool = False
    batches: tuple[int, ...] = (1,)
    device: str = "auto"
    config: Path | None = None
    baseline: Any = None  # the ReportSet of --baseline-report
    outputs: dict[str, Path] = field(default_factory=dict)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return _run(argv)
    except AnalyzerError as e:
        if debug:
            traceback.print_exc()
        print(f"analyze: error: {_one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("analyze: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # the last resort: a bug must still be one line and exit 2
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (rerun with --debug for the traceback)"
        print(f"analyze: error: unexpected {type(e).__name__}: {_one_line(str(e))[:300]}{hint}", file=sys.stderr)
        return EXIT_CANNOT_ANALYSE


def _run(argv: list[str]) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UsageError(_unrecognised(unknown, parser))
    if args.demo:
        return _demo(args, argv)
    settings = _settings(args)
    _check_cuda(args, settings)
    if args.load:
        results = _load(Path(args.load))
    else:
        results = _analyse(args, settings)
    results = _processed(results, settings, args, argv)
    _write_outputs(results, settings, args)
    _say_failures(results.reports, args.debug)
    return _exit_code(results.reports, settings.fail_on)


# -- arguments -------------------------------------------------------------------------


def _unrecognised(unknown: list[str], parser: argparse.ArgumentParser) -> str:
    options = [s for action in parser._actions for s in action.option_strings]
    first = unknown[0]
    flag = first.split("=", 1)[0]
    if flag.startswith("-"):
        close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else " (analyze --help lists the options)"
        return f"unrecognised option {flag}{hint}"
    return f"unexpected argument {first!r} (analyze --help lists the options)"


def _demo(args: argparse.Namespace, argv: list[str]) -> int:
    given = [a for a in argv if a.startswith("-") and a.split("=")[0] not in ("--demo", "--demo-dir", "--debug")]
    if args.paths or given:
        raise UsageError("--demo takes no checkpoints and no other options (only --demo-dir DIR)")
    folder = Path(args.demo_dir) if args.demo_dir else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise UsageError(f"--demo-dir {folder}: exists and is not a folder")
    from rich.console import Console

    from .demo import run_demo

    return run_demo(Console(), folder)


def _settings(args: argparse.Namespace) -> Settings:
    from .config import Config, find_config, read_config
    from .input_shape import parse_input_shape, parse_named_input
    from .report.process import check_kinds

    if args.demo_dir:
        raise UsageError("--demo-dir goes with --demo")
    config = Config() if args.isolated else read_config(Path(args.config)) if args.config else find_config()
    where = f"[tool.{DISTRIBUTION}] in {config.path}" if config.path else ""

    def pick(flag: str, value: Any, default: Any) -> tuple[Any, str]:
        if value is not None:
            return value, f"--{flag}"
        if flag in config.values:
            return config.values[flag], f"{flag} in {where}"
        return default, f"--{flag}"

    paths = [Path(p) for p in args.paths]
    if args.load and paths:
        raise UsageError("--load re-renders a saved report; give it no checkpoint paths")
    if not args.load and not paths:
        raise UsageError("give a checkpoint to analyse (analyze model.pth), or try analyze --demo")
    for path in [*paths, *([Path(args.baseline)] if args.baseline else [])]:
        if not path.exists():
            raise InputError(f"{path}: no such file")
    settings = Settings(paths=paths, config=config.path)
    settings.fail_on, origin = pick("fail-on", args.fail_on, "error")
    if settings.fail_on not in FAIL_ON:
        raise UsageError(f"{origin}: {settings.fail_on!r} is not one of {', '.join(FAIL_ON)}")
    settings.output_format, origin = pick("output-format", args.output_format, "rich")
    if settings.output_format not in OUTPUT_FORMATS:
        close = difflib.get_close_matches(str(settings.output_format), OUTPUT_FORMATS, n=1)
        raise UsageError(f"{origin}: unknown output format {settings.output_format!r}" + (f"; did you mean {close[0]}?" if close else ""))
    select, origin = pick("select", args.select, [])
    settings.select = check_kinds(select, origin)
    ignore, origin = pick("ignore", args.ignore, [])
    settings.ignore = check_kinds(ignore, origin)
    settings.all_layers = bool(pick("all-layers", args.all_layers, False)[0])
    settings.arch = pick("arch", args.arch, None)[0]
    shape, origin = pick("input-shape", args.input_shape, None)
    settings.input_shape = parse_input_shape(shape) if shape else None
    if args.input:
        if settings.input_shape is not None:
            raise UsageError("give --input-shape or --input NAME=SHAPE, not both")
        settings.input_shape = dict(parse_named_input(text) for text in args.input)
    settings.zero_tol, origin = pick("zero-tol", args.zero_tol, 0.0)
    if settings.zero_tol < 0:
        raise UsageError(f"{origin} must be >= 0")
    _check_combinations(args, settings)
    settings.batches = _batches(args.batch) if args.batch is not None else (1,)
    settings.device = _device(args.device) if args.device is not None else "auto"
    settings.outputs = _output_paths(args, settings)
    if args.baseline_report:
        settings.baseline = _load(Path(args.baseline_report), "--baseline-report")
    return settings


def _check_combinations(args: argparse.Namespace, settings: Settings) -> None:
    """Flags that contradict each other, refused before the analysis (not after it)."""
    if args.load:
        for flag in ("arch", "baseline", "input_shape", "compact", "key", "batch", "device"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} needs an analysis; --load only re-renders a saved report")
        if args.profile or args.trust or args.allow_module:
            raise UsageError("--profile/--trust/--allow-module need an analysis; --load only re-renders a saved report")
    if args.compact and len(settings.paths) != 1:
        raise UsageError("--compact takes exactly one checkpoint")
    if args.round_to is not None and (args.round_to <= 0 or not args.compact):
        raise UsageError("--round-to N needs --compact and a positive N")
    if not args.profile and (args.device is not None or args.batch is not None):
        raise UsageError("--device and --batch set how --profile measures: add --profile")
    stdout_users = []
    if args.json == "-":
        stdout_users.append("--json -")
    if settings.output_format != "rich" and not args.output_file:
        stdout_users.append(f"--output-format {settings.output_format}")
    if len(stdout_users) > 1:
        raise UsageError(f"{' and '.join(stdout_users)} both write to stdout: give one of them a file (--output-file FILE)")
    if args.quiet and args.export_svg:
        raise UsageError("--export-svg saves the terminal report, which --quiet does not draw: drop one of them")
    if args.quiet and settings.output_format != "rich":
        raise UsageError(f"--quiet replaces the terminal report with one line; --output-format {settings.output_format} is not the terminal report")
    if args.json == "-" and args.export_svg:
        raise UsageError("--export-svg saves the terminal report, which --json - replaces: give --json a file")
    if args.select and args.ignore and set(settings.select) & set(settings.ignore):
        both = ", ".join(sorted(set(settings.select) & set(settings.ignore)))
        raise UsageError(f"--select and --ignore both name {both}")


def _batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(part) for part in text.split(","))
    except ValueError as e:
        raise UsageError(f"--batch {text}: expected batch sizes like 1,8,32") from e
    if any(b <= 0 for b in batches):
        raise UsageError(f"--batch {text}: batch sizes must be positive")
    return batches


def _device(text: str) -> str:
    if not _DEVICE.fullmatch(text):
        raise UsageError(f"--device {text}: expected auto, cpu, cuda or cuda:N (the devices --profile can time)")
    return text


def _check_cuda(args: argparse.Namespace, settings: Settings) -> None:
    """An explicit CUDA device must exist here; checked before the analysis (this imports torch)."""
    if not settings.device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        built = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU or driver is visible"
        raise UsageError(f"--device {settings.device}: CUDA is not available here (torch {torch.__version__}, {built}); use --device cpu or auto")
    index = int(settings.device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device {settings.device}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def _output_paths(args: argparse.Namespace, settings: Settings) -> dict[str, Path]:
    """Every file this run will write, checked now: never an input, never twice, in a folder that exists."""
    outputs = {
        flag: Path(value)
        for flag, value in (
            ("--json", args.json if args.json != "-" else None),
            ("--export-html", args.export_html),
            ("--export-svg", args.export_svg),
            ("--output-file", args.output_file),
            ("--compact", args.compact),
        )
        if value
    }
    inputs = {str(p): p for p in settings.paths}
    for flag in ("baseline", "load", "baseline_report", "config"):
        if getattr(args, flag, None):
            inputs[str(getattr(args, flag))] = Path(getattr(args, flag))
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        for name, source in inputs.items():
            if _same_file(path, source):
                raise UsageError(f"{flag} {path} is the input {name}: refusing to write over an input")
        key = Path(os.path.abspath(path))
        for other_path, other in seen.items():
            if key == other_path or _same_file(path, other_path):
                raise UsageError(f"{flag} and {other} both write {path}")
        seen[key] = flag
        if path.is_dir():
            raise UsageError(f"{flag} {path} is a folder, expected a file")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError(f"{flag} {path}: the folder {parent} does not exist")
    return outputs


def _same_file(a: Path, b: Path) -> bool:
    """The same file whatever the path: symlinks and hard links included."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): it cannot be the other
        return False


# -- the work --------------------------------------------------------------------------


def _load(path: Path, flag: str = "--load") -> Any:
    from .report.render_json import load_report_set

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the report ({e.strerror if isinstance(e, OSError) else e})") from e
    return load_report_set(text, str(path))


def _analyse(args: argparse.Namespace, settings: Settings) -> Any:
    import gc

    from .api import analyze
    from .report.model import ReportSet

    # torch's import leaves ~10^6 objects that live as long as this command: out of the
    # collector's sight, each collection during the analysis is cheaper, and the bounded
    # children forked to read untrusted bytes do not copy their pages by touching them.
    gc.freeze()
    progress = _progress(args)
    reports = [
        analyze(
            path,
            arch=settings.arch,
            baseline=args.baseline,
            input_shape=settings.input_shape,
            trust=args.trust,
            allow_modules=tuple(args.allow_module),
            key=args.key,
            zero_tol=settings.zero_tol,
            profile=args.profile,
            device=settings.device,
            batches=settings.batches,
            compact_to=args.compact,
            round_to=args.round_to,
            progress=progress,
        )
        for path in settings.paths
    ]
    return ReportSet(reports)


def _progress(args: argparse.Namespace) -> Any:
    from rich.console import Console

    from .progress import NullProgress, RichProgress

    stderr = Console(stderr=True)
    if args.quiet or not stderr.is_terminal:
        return NullProgress()
    return RichProgress(stderr)


def _processed(results: Any, settings: Settings, args: argparse.Namespace, argv: list[str]) -> Any:
    """Selection and baseline applied; the run described (a loaded report keeps its own run)."""
    import dataclasses
    import platform
    from datetime import datetime, timezone

    from .report.process import drop_known, select_kinds

    reports = select_kinds(results.reports, settings.select, settings.ignore)
    if settings.baseline is not None:
        reports = drop_known(reports, settings.baseline.reports, str(args.baseline_report))
    run = results.run
    if not args.load:
        torch = sys.modules.get("torch")
        run = dataclasses.replace(
            run,
            distribution=DISTRIBUTION,
            version=__version__,
            torch=getattr(torch, "__version__", None),
            python=platform.python_version(),
            command=["analyze", *argv],
            created=datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            config=str(settings.config) if settings.config else None,
        )
    run = dataclasses.replace(
        run,
        select=list(settings.select) or run.select,
        ignore=list(settings.ignore) or run.ignore,
        baseline_report=str(args.baseline_report) if args.baseline_report else run.baseline_report,
    )
    return dataclasses.replace(results, reports=reports, run=run)


def _write_outputs(results: Any, settings: Settings, args: argparse.Namespace) -> None:
    from rich.console import Console

    from .outputs import atomic_write_text
    from .report.emit import EmitOptions, renderer
    from .report.render_json import render_json
    from .report.render_rich import RichRenderer, summary_line

    terminal = Console()
    options = EmitOptions(
        fail_on=settings.fail_on,
        all_layers=settings.all_layers,
        width=terminal.width,
        color=terminal.is_terminal and not args.output_file and terminal.color_system is not None,
    )
    files = settings.outputs
    if "--json" in files:
        _write(files["--json"], render_json(results) + "\n", atomic_write_text)
    if "--export-html" in files:
        _write(files["--export-html"], renderer("html").render(results, options), atomic_write_text)
    if "--export-svg" in files:
        _write(files["--export-svg"], RichRenderer().svg(results, options), atomic_write_text)
    if args.json == "-":
        sys.stdout.write(render_json(results) + "\n")
        return
    if args.quiet:
        sys.stdout.write(summary_line(results.reports, settings.fail_on) + "\n")
        return
    text = renderer(settings.output_format).render(results, options)
    if "--output-file" in files:
        _write(files["--output-file"], text, atomic_write_text)
    else:
        sys.stdout.write(text)


def _write(path: Path, text: str, write: Any) -> None:
    try:
        write(path, text)
    except OSError as e:
        raise InputError(f"{path}: cannot write it ({e.strerror or e})") from e


def _say_failures(reports: list[Any], debug: bool) -> None:
    """A check that raised is an incomplete analysis: one line each on stderr (the traceback with --debug)."""
    for report in reports:
        for failure in report.failures:
            if debug and failure.get("traceback"):
                print(failure["traceback"].rstrip(), file=sys.stderr)
            print(
                f"analyze: error: {report.source.path}: the {failure['pass']} check failed "
                f"({failure['exception']}: {failure['message']}); the analysis is incomplete",
                file=sys.stderr,
            )


def _exit_code(reports: list[Any], fail_on: str) -> int:
    if any(report.failures for report in reports):
        return EXIT_CANNOT_ANALYSE  # incomplete: whatever the findings say, some checks did not run
    if fail_on == "never":
        return EXIT_OK
    from .report.model import Severity

    threshold = Severity(fail_on)
    return EXIT_FINDINGS if any(r.has_findings_at_least(threshold) for r in reports) else EXIT_OK


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
