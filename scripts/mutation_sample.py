"""Names of mutmut's mutants of one module that change the logic, not only a message.

mutmut (README, Development) mutates every string literal three ways (XX-wrapped, lower
and upper case); in the diagnosis modules most are pieces of a message a person reads.
This lists the other mutants of a module, read from the `mutants/` tree that `mutmut run`
generated, optionally a seeded sample of them, for `mutmut run`:

    .venv/bin/mutmut run --max-children 2 $(.venv/bin/python scripts/mutation_sample.py analyzer/model/silence.py)
    .venv/bin/python scripts/mutation_sample.py analyzer/passes/zeroed_channels.py --sample 40 --seed 13
    .venv/bin/python scripts/mutation_sample.py analyzer/compact/compaction.py --messages   # the message-only ones
"""

from __future__ import annotations

import argparse
import ast
import random
import re
import sys
from pathlib import Path

_MUTANT = re.compile(r"^(?P<function>.+)__mutmut_(?P<number>\d+|orig)$")


def _without_strings(node: ast.AST) -> str:
    """The function's AST with every string constant blanked (its name too)."""
    copy = ast.parse(ast.unparse(node))
    for child in ast.walk(copy):
        if isinstance(child, ast.Constant) and isinstance(child.value, str):
            child.value = ""
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            child.name = ""
    return ast.dump(copy)


def mutants(module_path: Path, root: Path = Path("mutants")) -> tuple[list[str], list[str]]:
    """(logic mutants, message-only mutants) of `module_path` (e.g. analyzer/model/silence.py)."""
    tree = ast.parse((root / module_path).read_text(encoding="utf-8"))
    dotted = ".".join(module_path.with_suffix("").parts)
    dotted = dotted.removesuffix(".__init__")
    functions: dict[str, dict[str, ast.AST]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (match := _MUTANT.match(node.name)):
            functions.setdefault(match["function"], {})[match["number"]] = node
    logic, messages = [], []
    for function, versions in sorted(functions.items()):
        original = _without_strings(versions["orig"]) if "orig" in versions else None
        for number, node in sorted(versions.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1):
            if number == "orig":
                continue
            name = f"{dotted}.{function}__mutmut_{number}"
            (messages if _without_strings(node) == original else logic).append(name)
    return logic, messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", type=Path, help="the module's path, e.g. analyzer/model/silence.py")
    parser.add_argument("--sample", type=int, help="a seeded random sample of this many logic mutants")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--messages", action="store_true", help="list the message-only mutants instead")
    args = parser.parse_args(argv)
    logic, messages = mutants(args.module)
    chosen = messages if args.messages else logic
    if args.sample is not None and args.sample < len(chosen):
        chosen = sorted(random.Random(args.seed).sample(chosen, args.sample))
    print("\n".join(chosen))
    print(f"{len(logic)} logic mutants, {len(messages)} message-only", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
