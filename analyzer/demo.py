"""`analyze --demo`: make the classic broken checkpoints with the real tools, analyse each.

Every case is what people do in practice: torch-pruning with an odd ratio and heads not
ignored, torch.nn.utils.prune left with its masks or with scattered zeros, a hand-pruned
residual block, a thin deep net whose FLOPs fell 75% but whose latency did not (profiled),
a full-model pickle whose class is gone, a file carrying a payload. They are built from
the zoo models in a temp folder (or `--demo-dir DIR`, kept so that the printed fix code
runs there) and analysed one by one, each in about one screen.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from rich.console import Console
from rich.rule import Rule
from rich.text import Text

from .api import analyze
from .outputs import atomic_write_text
from .report.model import Report, ReportSet, RunInfo
from .report.render_rich import RenderOptions, render
from .report.rich_compare import comparison_table

__all__ = ["DemoCase", "DEMO_CASES", "REPORTS_FILE", "make_demo_checkpoints", "run_demo", "thin_net"]

_EXAMPLE_INPUT = (1, 3, 64, 64)
#: With --demo-dir: the reports of every case, as `analyze --json` writes them.
REPORTS_FILE = "reports.json"
#: The thin net runs on tiny inputs: its time is per-operator cost, not arithmetic.
_THIN_INPUT = (1, 3, 4, 4)
_THIN_BLOCKS = 8


@dataclass(frozen=True)
class DemoCase:
    filename: str
    story: str
    make: Callable[[Path], None]
    analyze_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Also show --compact on this one.
    compact: bool = False
    #: Analyse with this many CPU threads (the profiled case: stable timings on a shared machine).
    threads: int | None = None


def _torch_pruned(model: nn.Module, ratio: float, ignored: list[nn.Module], round_to: int | None = None) -> nn.Module:
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(
        model,
        torch.randn(*_EXAMPLE_INPUT),
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        round_to=round_to,
    )
    pruner.step()
    return model


def _make_resnet34_tp(path: Path) -> None:
    from .zoo import resnet34

    model = resnet34().eval()
    # torch-pruning's documentation saves the pruned model whole, classes and all.
    torch.save(_torch_pruned(model, 0.3, ignored=[model.fc]), path)


def _make_retinaface_heads_pruned(path: Path) -> None:
    from .zoo import retinaface_mnet

    torch.save(_torch_pruned(retinaface_mnet(phase="train").eval(), 0.5, ignored=[]), path)


def _resnet18_convs() -> tuple[nn.Module, list[nn.Conv2d]]:
    from .zoo import resnet18

    model = resnet18().eval()
    return model, [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _make_masks_left(path: Path) -> None:
    model, convs = _resnet18_convs()
    prune.global_unstructured([(c, "weight") for c in convs], pruning_method=prune.L1Unstructured, amount=0.5)
    torch.save(model.state_dict(), path)


def _make_unstructured(path: Path) -> None:
    model, convs = _resnet18_convs()
    prune.global_unstructured([(c, "weight") for c in convs], pruning_method=prune.L1Unstructured, amount=0.5)
    for conv in convs:
        prune.remove(conv, "weight")
    torch.save(model.state_dict(), path)


def _make_ln_structured(path: Path) -> None:
    model, convs = _resnet18_convs()
    for conv in convs[1:]:
        prune.ln_structured(conv, "weight", amount=0.3, n=2, dim=0)
        prune.remove(conv, "weight")
    torch.save(model.state_dict(), path)


def _make_residual_by_hand(path: Path) -> None:
    """Channels cut from one conv with torch-pruning's low-level functions, no DependencyGraph:
    the block's output no longer matches its shortcut."""
    import torch_pruning as tp

    from .zoo import resnet18

    model = resnet18().eval()
    block = model.layer1[0]
    drop = list(range(16))  # 16 of 64 output channels of the block's last conv
    tp.prune_conv_out_channels(block.conv2, idxs=drop)
    tp.prune_batchnorm_out_channels(block.bn2, idxs=drop)
    torch.save(model.state_dict(), path)


def thin_net() -> nn.Module:
    """A deep, thin CNN (the dense reference of the no-speedup case): many tiny layers."""
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    for _ in range(_THIN_BLOCKS):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)]
    return nn.Sequential(*layers)


def _make_thin_pruned(path: Path) -> None:
    import torch_pruning as tp

    model = thin_net().eval()
    pruner = tp.pruner.MetaPruner(
        model,
        torch.randn(*_THIN_INPUT),
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[model[-1]],
        round_to=8,
    )
    pruner.step()
    torch.save(model.state_dict(), path)


def _make_class_gone(path: Path) -> None:
    # A model class that lived in the user's own package, which is not importable here.
    package = path.parent / "mynets_demo.py"
    package.write_text(textwrap.dedent("""
        import torch.nn as nn
        class C2f_v2(nn.Module):
            def __init__(self):
                super().__init__()
                self.cv1 = nn.Conv2d(3, 16, 3, padding=1)
                self.bn = nn.BatchNorm2d(16)
                self.head = nn.Conv2d(16, 8, 1)
            def forward(self, x):
                return self.head(self.bn(self.cv1(x)))
    """))
    sys.path.insert(0, str(path.parent))
    try:
        module = importlib.import_module("mynets_demo")
        torch.save(module.C2f_v2(), path)
    finally:
        sys.path.remove(str(path.parent))
        sys.modules.pop("mynets_demo", None)
        package.unlink()


class _Payload:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.sentinel}",))


def _make_payload(path: Path) -> None:
    from .zoo import resnet18

    sentinel = path.with_suffix(".PAYLOAD-RAN")
    torch.save({"state_dict": resnet18().state_dict(), "hook": _Payload(sentinel)}, path)


def _demo_profile() -> Any:
    from .profile import MeasureOptions, ProfileOptions

    # A short budget: the point (latency does not follow FLOPs) is far beyond the noise.
    return ProfileOptions(device="cpu", measure=MeasureOptions(min_time_s=0.3, max_time_s=2.0), layer_profile_s=0.05)


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


DEMO_CASES: tuple[DemoCase, ...] = (
    DemoCase(
        "resnet34_tp_ratio0.3.pth",
        "ResNet-34 channel-pruned by torch-pruning at ratio 0.3, saved whole with torch.save(model); compared with the dense zoo ResNet-34",
        _make_resnet34_tp,
        {"arch": "analyzer.zoo:resnet34", "input_shape": _EXAMPLE_INPUT},
    ),
    DemoCase(
        "thin_net_tp_0.5.pth",
        f"a {_THIN_BLOCKS}-block thin CNN pruned by torch-pruning at 0.5: 75% fewer FLOPs; "
        "profiled against the dense one on CPU, one thread",
        _make_thin_pruned,
        {"arch": "analyzer.demo:thin_net", "input_shape": _THIN_INPUT, "profile": True, "profile_options": _demo_profile()},
        threads=1,
    ),
    DemoCase(
        "resnet18_residual_by_hand.pth",
        "ResNet-18 with 16 channels cut from layer1.0.conv2 by hand (tp.prune_conv_out_channels, no DependencyGraph)",
        _make_residual_by_hand,
        {"arch": "analyzer.zoo:resnet18", "input_shape": _EXAMPLE_INPUT},
    ),
    DemoCase("retinaface_heads_pruned.pth", "RetinaFace (MobileNet-0.25) pruned by torch-pruning at 0.5 without ignoring the detection heads", _make_retinaface_heads_pruned),
    DemoCase("resnet18_prune_masks.pth", "ResNet-18 after prune.global_unstructured(L1, 50%), saved without prune.remove", _make_masks_left),
    DemoCase("resnet18_unstructured.pth", "the same after prune.remove: scattered zeros in dense tensors", _make_unstructured),
    DemoCase(
        "resnet18_ln_structured.pth",
        "ResNet-18 after prune.ln_structured(dim=0, 30%) + prune.remove: filters zeroed, not removed",
        _make_ln_structured,
        {"arch": "analyzer.zoo:resnet18", "input_shape": _EXAMPLE_INPUT},
        compact=True,
    ),
    DemoCase("custom_class_gone.pth", "a full-model pickle whose class (mynets_demo.C2f_v2) is not importable here", _make_class_gone),
    DemoCase("payload.pth", "a checkpoint carrying an os.system payload in its pickle", _make_payload),
)


def _run_info(folder: Path) -> RunInfo:
    import platform
    from datetime import datetime, timezone

    from . import DISTRIBUTION, __version__

    return RunInfo(
        distribution=DISTRIBUTION, version=__version__, torch=torch.__version__, python=platform.python_version(),
        command=["analyze", "--demo", "--demo-dir", str(folder)],
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    )


def make_demo_checkpoints(folder: Path, cases: tuple[DemoCase, ...] = DEMO_CASES) -> list[Path]:
    paths = []
    torch.manual_seed(0)
    for case in cases:
        path = folder / case.filename
        case.make(path)
        paths.append(path)
    return paths


def run_demo(console: Console, folder: Path | None = None) -> int:
    """Make the cases in `folder` (kept) or a temp folder (removed at the end), analyse and show each."""
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="analyzer-demo-") as tmp:
            return _run_in(console, Path(tmp), kept=False)
    folder.mkdir(parents=True, exist_ok=True)
    return _run_in(console, folder, kept=True)


def _run_in(console: Console, folder: Path, kept: bool) -> int:
    with console.status("making the demo checkpoints with torch-pruning and torch.nn.utils.prune…"):
        paths = make_demo_checkpoints(folder)
    results: list[Report] = []
    for case, path in zip(DEMO_CASES, paths):
        console.print(Rule(Text(case.filename, style="bold")))
        console.print(Text(case.story, style="dim italic"))
        compact_to = path.with_name(path.stem + ".compact.pth") if case.compact else None
        with _threads(case.threads):
            report = analyze(path, **case.analyze_kwargs, compact_to=compact_to)
        render(report, console, RenderOptions(show_layers=False, brief=True))
        results.append(report)
    payload_ran = any(folder.glob("*.PAYLOAD-RAN"))
    if kept:
        atomic_write_text(folder / REPORTS_FILE, ReportSet(results, run=_run_info(folder)).to_json() + "\n")
    console.print(Rule(Text("summary", style="bold")))
    console.print(comparison_table(results))
    console.print(
        "The payload never ran (no sentinel file was created)." if not payload_ran else "[bold red]The payload ran![/]"
    )
    if kept:
        console.print(
            f"The checkpoints are in [bold]{folder}[/] (the fix code above reads them there), their reports in "
            f"[bold]{folder / REPORTS_FILE}[/] (try analyze --load {folder / REPORTS_FILE} --export-html demo.html)."
        )
    else:
        console.print("The checkpoints were made in a temporary folder, now removed: add [bold]--demo-dir DIR[/] to keep them and run the fix code.")
    console.print("Next: [bold]analyze your_model.pth[/] (--arch pkg.module:factory to compare with the dense model; --help for more).")
    return 0
