"""`analyze`: arguments → api → renderer → exit code. The only place that prints or exits."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from . import __version__
from .api import analyze
from .model import parse_input_shape
from .errors import AnalyzerError, InputError, UsageError
from .outputs import atomic_write_text
from .progress import NullProgress, Progress, RichProgress
from .report.model import Report, Severity
from .report.render_json import load_reports, render_json
from .report.render_rich import RenderOptions, render, render_many

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FINDINGS, EXIT_CANNOT_ANALYSE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analyze",
        description="Diagnose a pruned PyTorch checkpoint: zeros vs removed channels, broken residuals "
        "and heads, failed loads, and why pruning did not make it faster.",
        epilog="Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 the file could not be analysed (or a check failed).",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="checkpoint files (.pth, .pt, .bin, .safetensors, TorchScript); several make a comparison")
    parser.add_argument("--demo", action="store_true", help="make the classic broken checkpoints in a temp folder and analyse each")
    parser.add_argument("--load", metavar="REPORT.JSON", help="re-render a saved JSON report without re-analysing")
    parser.add_argument("--fail-on", choices=["error", "warning", "info", "never"], default="error", help="exit 1 when findings reach this severity (default: error)")
    model = parser.add_argument_group("model")
    model.add_argument("--arch", metavar="PKG.MODULE:FACTORY", help="dense architecture to fit the checkpoint to (imports that code), e.g. analyzer.zoo:resnet50")
    model.add_argument("--baseline", metavar="DENSE.PTH", help="dense checkpoint to compare widths (and, profiled, speed) with")
    model.add_argument("--input-shape", metavar="N,C,H,W", help="example input for running the model (default: inferred from the first layer)")
    prof = parser.add_argument_group("profiling")
    prof.add_argument("--profile", action="store_true", help="measure latency, FLOPs, per-layer time (and NVML on a GPU); dense vs pruned with --baseline/--arch")
    prof.add_argument("--device", default="auto", metavar="DEV", help="auto (CUDA when available), cpu, cuda, cuda:N")
    prof.add_argument("--batch", default="1", metavar="B[,B...]", help="batch sizes to time, e.g. 1,8,32 (default 1)")
    comp = parser.add_argument_group("compact")
    comp.add_argument("--compact", metavar="OUT.PTH", help="write a copy with zeroed channels removed and masks folded (outputs verified equal)")
    comp.add_argument("--round-to", type=int, metavar="N", help="with --compact: keep a few zero channels so widths stay multiples of N")
    load = parser.add_argument_group("loading")
    load.add_argument("--trust", action="store_true", help="unpickle fully: runs code from the file (only for files you made)")
    load.add_argument("--allow-module", action="append", default=[], metavar="PKG", help="import PKG and rebuild its classes from the pickle (repeatable)")
    load.add_argument("--key", metavar="KEY", help="entry of a training checkpoint holding the weights (e.g. ema, model.state_dict)")
    scan = parser.add_argument_group("analysis")
    scan.add_argument("--zero-tol", type=float, default=0.0, metavar="TOL", help="count |x| <= TOL as zero (default: exactly 0)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the report as JSON to FILE ('-' for stdout)")
    out.add_argument("--export-html", metavar="FILE", help="also save the terminal report as HTML (to attach to an issue or a PR)")
    out.add_argument("--export-svg", metavar="FILE", help="also save the terminal report as SVG")
    out.add_argument("--all-layers", action="store_true", help="show every layer in the module tree")
    out.add_argument("--quiet", "-q", action="store_true", help="no terminal report and no progress bars (use with --json)")
    out.add_argument("--debug", action="store_true", help="show tracebacks")
    out.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exporting = bool(args.export_html or args.export_svg)
    console = Console(record=exporting)
    try:
        if args.demo:
            from .demo import run_demo

            return run_demo(console)
        reports = _reports(args)
        _output(reports, args, console)
        _say_failures(reports, args.debug)
        return _exit_code(reports, args.fail_on)
    except AnalyzerError as e:
        if args.debug:
            traceback.print_exc()
        print(f"analyze: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("analyze: interrupted", file=sys.stderr)
        return 130


def _reports(args: argparse.Namespace) -> list[Report]:
    if args.load:
        if args.paths:
            raise UsageError("--load re-renders a saved report; give it no checkpoint paths")
        path = Path(args.load)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read the report ({e.strerror if isinstance(e, OSError) else e})") from e
        return load_reports(text, str(path))
    if not args.paths:
        raise UsageError("give a checkpoint to analyse (analyze model.pth), or try analyze --demo")
    if args.zero_tol < 0:
        raise UsageError("--zero-tol must be >= 0")
    if args.compact and len(args.paths) != 1:
        raise UsageError("--compact takes exactly one checkpoint")
    if args.round_to is not None and (args.round_to <= 0 or not args.compact):
        raise UsageError("--round-to N needs --compact and a positive N")
    input_shape = parse_input_shape(args.input_shape) if args.input_shape else None
    batches = _batches(args.batch)
    progress = _progress(args)
    return [
        analyze(
            path,
            arch=args.arch,
            baseline=args.baseline,
            input_shape=input_shape,
            trust=args.trust,
            allow_modules=tuple(args.allow_module),
            key=args.key,
            zero_tol=args.zero_tol,
            profile=args.profile,
            device=args.device,
            batches=batches,
            compact_to=args.compact,
            round_to=args.round_to,
            progress=progress,
        )
        for path in args.paths
    ]


def _progress(args: argparse.Namespace) -> Progress:
    stderr = Console(stderr=True)
    if args.quiet or not stderr.is_terminal:
        return NullProgress()
    return RichProgress(stderr)


def _batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(part) for part in text.split(","))
    except ValueError as e:
        raise UsageError(f"--batch {text}: expected batch sizes like 1,8,32") from e
    if any(b <= 0 for b in batches):
        raise UsageError(f"--batch {text}: batch sizes must be positive")
    return batches


def _output(reports: list[Report], args: argparse.Namespace, console: Console) -> None:
    if args.json == "-":
        sys.stdout.write(render_json(reports) + "\n")
    elif args.json:
        atomic_write_text(Path(args.json), render_json(reports) + "\n")
    if args.quiet or args.json == "-":
        if args.export_html or args.export_svg:
            raise UsageError("--export-html/--export-svg save the terminal report: drop --quiet and --json -")
        return
    options = RenderOptions(all_layers=args.all_layers)
    if len(reports) == 1:
        render(reports[0], console, options)
    else:
        render_many(reports, console, options)
    if args.export_html:
        atomic_write_text(Path(args.export_html), console.export_html(clear=False))
    if args.export_svg:
        atomic_write_text(Path(args.export_svg), console.export_svg(clear=False, title="analyze"))


def _say_failures(reports: list[Report], debug: bool) -> None:
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


def _exit_code(reports: list[Report], fail_on: str) -> int:
    if any(report.failures for report in reports):
        return EXIT_CANNOT_ANALYSE  # incomplete: whatever the findings say, some checks did not run
    if fail_on == "never":
        return EXIT_OK
    threshold = Severity(fail_on)
    return EXIT_FINDINGS if any(r.has_findings_at_least(threshold) for r in reports) else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
