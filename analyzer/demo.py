"""`analyze --demo`: make the classic broken checkpoints with the real tools, analyse each.

Every case is what people do in practice: torch-pruning with an odd ratio and heads not
ignored, torch.nn.utils.prune left with its masks or with scattered zeros, a full-model
pickle whose class is gone, a file carrying a payload. They are built in a temp folder
from the zoo models and analysed one by one.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from rich.console import Console
from rich.rule import Rule

from .api import analyze
from .report.model import Report
from .report.render_rich import RenderOptions, render
from .report.rich_compare import comparison_table

__all__ = ["DemoCase", "DEMO_CASES", "make_demo_checkpoints", "run_demo"]

_EXAMPLE_INPUT = (1, 3, 64, 64)


@dataclass(frozen=True)
class DemoCase:
    filename: str
    story: str
    make: Callable[[Path], None]
    analyze_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Also show --compact on this one.
    compact: bool = False


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


DEMO_CASES: tuple[DemoCase, ...] = (
    DemoCase(
        "resnet34_tp_ratio0.3.pth",
        "ResNet-34 channel-pruned by torch-pruning at ratio 0.3, saved whole with torch.save(model); compared with the dense zoo ResNet-34",
        _make_resnet34_tp,
        {"arch": "analyzer.zoo:resnet34", "input_shape": _EXAMPLE_INPUT},
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


def make_demo_checkpoints(folder: Path, cases: tuple[DemoCase, ...] = DEMO_CASES) -> list[Path]:
    paths = []
    torch.manual_seed(0)
    for case in cases:
        path = folder / case.filename
        case.make(path)
        paths.append(path)
    return paths


def run_demo(console: Console) -> int:
    with tempfile.TemporaryDirectory(prefix="analyzer-demo-") as tmp:
        folder = Path(tmp)
        with console.status("making the demo checkpoints with torch-pruning and torch.nn.utils.prune…"):
            paths = make_demo_checkpoints(folder)
        results: list[tuple[DemoCase, Report]] = []
        for case, path in zip(DEMO_CASES, paths):
            console.print(Rule(f"[bold]{case.filename}[/]"))
            console.print(f"[dim]{case.story}[/]")
            compact_to = path.with_name(path.stem + ".compact.pth") if case.compact else None
            report = analyze(path, **case.analyze_kwargs, compact_to=compact_to)
            render(report, console, RenderOptions(show_layers=False))
            results.append((case, report))
        payload_ran = any(folder.glob("*.PAYLOAD-RAN"))
    console.print(Rule("[bold]summary[/]"))
    console.print(comparison_table([report for _, report in results]))
    console.print(
        "The payload never ran (no sentinel file was created)." if not payload_ran else "[bold red]The payload ran![/]"
    )
    console.print("Next: [bold]analyze your_model.pth[/] (add [bold]--json report.json[/] for machines).")
    return 0
