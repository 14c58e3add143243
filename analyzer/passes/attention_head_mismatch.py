"""`attention-head-mismatch`: attention projections that no longer hold whole heads.

Attention reshapes its query, key and value projections to (batch, tokens, heads,
head_dim). Pruning that cuts channels inside a head (q_proj left with 240 rows where
head_dim is 64), or keys and values apart, or query heads that no longer split into
groups over the key/value heads (grouped-query attention), makes that reshape fail —
`shape '[1, 16, -1, 64]' is invalid for input of size 3840` — or attention silently
mix heads. This pass checks every attention module (model/attention.py) from tensor
names and shapes, with head_dim and head counts from the module's own attributes (what
its forward reshapes by), config.json, or the dense reference; the fix is torch-pruning's
head recipe, which removes whole heads and keeps head_dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from ..model import attention
from ..model.attention import AttentionSite, Heads, Projection
from ..tensors.layers import TRANSPOSED_LINEAR
from ..load.placeholder import Placeholder
from ..report.model import Finding, Severity
from .context import PassContext

KIND = "attention-head-mismatch"
_SHOWN = 4


@dataclass
class Checked:
    """One attention module whose widths do not hold its heads."""

    site: AttentionSite
    heads: Heads
    problems: list[str] = field(default_factory=list)
    #: The forward pass's error, when it failed in this module.
    error: str | None = None


def run(ctx: PassContext) -> list[Finding]:
    broken = broken_sites(ctx)
    return [_finding(ctx, broken)] if broken else []


def explains(ctx: PassContext) -> bool:
    """True when the forward pass failed in an attention module this check reports."""
    return any(checked.error is not None for checked in broken_sites(ctx))


def broken_sites(ctx: PassContext) -> list[Checked]:
    """Attention modules whose projections no longer fit their heads, in model order."""
    sites = ctx.attention_sites()
    if not sites:
        return []
    model = ctx.model
    module = model.module if model is not None else _checkpoint_module(ctx)
    modules = dict(module.named_modules()) if module is not None else {}
    reference = ctx.matching_reference
    reference_modules = dict(reference.module.named_modules()) if reference and reference.module is not None else {}
    reference_sites = {s.name: s for s in attention.sites_from_module(reference.module)} if reference_modules else {}
    config = attention.config_heads(ctx.config)
    if config.head_dim is None:
        config = attention.config_heads(attention.config_dict(module), "the model's config")
    ran = set(model.trace.calls) if model is not None else set()
    failure = model.trace.failure if model is not None else None
    broken = []
    for site in sites:
        if site.name in ran:
            continue  # its forward ran on these widths: whatever it reshapes by, they fit
        heads, strict = _heads(site, modules.get(site.name), config, reference_modules.get(site.name), reference_sites.get(site.name))
        if heads.head_dim is None and site.kind == "fused":
            continue  # nothing to divide a fused projection by
        failed_here = failure is not None and _failed_in(failure.module, failure.stack, site.name)
        # Stale attributes matter where forward failed in the module (or nothing ran): a
        # module may well not read num_heads at all (transformers' ViT reshapes by head_dim).
        problems = _problems(site, heads, strict, attributes=model is None or failed_here)
        if problems:
            error = f"{failure.exception_type}: {failure.message}" if failed_here and failure is not None else None
            broken.append(Checked(site, heads, problems, error))
    return broken


def _checkpoint_module(ctx: PassContext) -> nn.Module | None:
    module = ctx.checkpoint.module
    if module is None or any(isinstance(m, Placeholder) for m in module.modules()):
        return None
    return module


def _failed_in(module: str, stack: list[str], site: str) -> bool:
    return module == site or site in stack or module.startswith(site + ".")


def _heads(
    site: AttentionSite,
    module: nn.Module | None,
    config: Heads,
    reference: nn.Module | None,
    reference_site: AttentionSite | None,
) -> tuple[Heads, bool]:
    """The heads to check against, and whether they are what forward uses (strict) or the
    dense model's, which whole-head or per-head pruning may both have changed."""
    if isinstance(module, nn.MultiheadAttention):
        return Heads(module.head_dim, module.num_heads, module.num_heads, f"{site.name}'s attributes", {"embed_dim": module.embed_dim, "num_heads": module.num_heads}), True
    own = attention.module_heads(module, f"{site.name}'s attributes")
    if own.head_dim is not None:
        return own, True
    if config.head_dim is not None:
        return config, False
    if isinstance(reference, nn.MultiheadAttention):
        return Heads(reference.head_dim, reference.num_heads, reference.num_heads, "the dense reference"), False
    dense = attention.module_heads(reference, "the dense reference")
    if reference_site is not None:
        width = reference_site.query_width
        if dense.head_dim is None and dense.heads and width and width % dense.heads == 0:
            dense = Heads(width // dense.heads, dense.heads, dense.kv_heads or dense.heads, dense.source, dense.attributes)
    if dense.head_dim is not None:
        return dense, False
    return own, True


def _problems(site: AttentionSite, heads: Heads, strict: bool, attributes: bool) -> list[str]:
    """What no longer fits; `strict`: the heads are what forward uses; `attributes`: check the
    module's head-count attributes against the widths too."""
    if site.kind == "in_proj":
        return _in_proj_problems(site, heads, strict)
    if site.kind == "fused":
        return _fused_problems(site, heads, strict, attributes)
    return _separate_problems(site, heads, strict, attributes)


def _separate_problems(site: AttentionSite, heads: Heads, strict: bool, attributes: bool) -> list[str]:
    q, k, v, o = site.q, site.k, site.v, site.o
    assert q is not None and k is not None and v is not None
    d = heads.head_dim
    problems = []
    if d is not None and not (not strict and _narrower_heads_fit(q.out, k.out, v.out, heads)):
        for projection in (q, k, v):
            if projection.out % d:
                problems.append(_not_whole(projection, d, heads.source))
        if not problems and k.out != v.out:
            problems.append(f"{k.leaf} holds {k.out // d} heads but {v.leaf} {v.out // d}: keys and values must have the same heads")
        if not problems and (q.out // d) % (k.out // d):
            problems.append(
                f"{q.out // d} query heads do not split into groups over {k.out // d} key/value heads "
                f"(grouped-query attention needs num_key_value_heads to divide num_attention_heads)"
            )
    if not problems and k.out and q.out % k.out:
        # Whatever head_dim is, queries and keys share it and query heads are a whole number of
        # groups of key/value heads: q's rows are a multiple of k's.
        problems.append(
            f"{q.leaf} has {q.out} rows: not a whole multiple of {k.leaf}'s {k.out} — queries and keys share "
            "head_dim, and query heads must be a whole number of groups of key/value heads"
        )
    if o is not None and o.inp != q.out:
        problems.append(f"{o.leaf} reads {o.inp} inputs but {q.leaf} gives {q.out}")
    if strict and attributes and not problems and d is not None:
        problems += _attribute_problems(q.out // d, k.out // d, heads, q.leaf)
    return problems


def _narrower_heads_fit(q: int, k: int, v: int, heads: Heads) -> bool:
    """The widths hold the dense head counts with a narrower head_dim (torch-pruning's
    head-dim pruning keeps every head and removes the same dims from each)."""
    h, kv = heads.heads, heads.kv_heads or heads.heads
    if not h or not kv or q % h or k % kv or k != v:
        return False
    return q // h == k // kv and q // h != heads.head_dim


def _fused_problems(site: AttentionSite, heads: Heads, strict: bool, attributes: bool) -> list[str]:
    fused = site.fused
    assert fused is not None and heads.head_dim is not None
    d, parts = heads.head_dim, site.parts
    kv = heads.kv_heads if heads.kv_heads and heads.heads and heads.kv_heads != heads.heads else None
    problems = []
    if kv is not None and parts == 3:
        # grouped-query fused projection: (heads + 2 × kv heads) × head_dim rows
        if fused.out % d:
            problems.append(_not_whole(fused, d, heads.source))
    elif fused.out % (parts * d) and not (not strict and heads.heads and fused.out % (parts * heads.heads) == 0):
        problems.append(
            f"{fused.leaf} has {fused.out} rows: not {parts} equal parts of whole heads of head_dim {d} "
            f"({fused.out / (parts * d):.4g} heads each; head_dim from {heads.source})"
        )
    width = site.query_width
    if site.o is not None and width is not None and not problems and site.q is None and site.o.inp != width:
        problems.append(f"{site.o.leaf} reads {site.o.inp} inputs but {fused.leaf} gives {width} per part")
    if strict and attributes and not problems and width is not None and kv is None:
        problems += _attribute_problems(width // d, width // d, heads, fused.leaf)
    return problems


def _in_proj_problems(site: AttentionSite, heads: Heads, strict: bool) -> list[str]:
    fused = site.fused
    assert fused is not None
    problems = []
    if fused.out % 3:
        return [f"in_proj_weight has {fused.out} rows: not 3 equal parts (q, k, v)"]
    embed = fused.out // 3
    if site.o is not None and site.o.inp != embed:
        problems.append(f"out_proj reads {site.o.inp} inputs but in_proj_weight gives {embed} per part")
    if not heads.heads:
        return problems
    if strict:
        declared = heads.attributes.get("embed_dim")
        if declared is not None and declared != embed:
            problems.append(f"embed_dim attribute is {declared} but in_proj_weight holds 3 × {embed}")
        elif embed % heads.heads:
            problems.append(f"embed_dim {embed} is not a multiple of num_heads {heads.heads} ({embed / heads.heads:.4g} per head)")
    elif embed % heads.heads and (not heads.head_dim or embed % heads.head_dim):
        problems.append(
            f"embed_dim {embed} holds neither {heads.heads} heads ({embed / heads.heads:.4g} each) nor whole heads of "
            f"head_dim {heads.head_dim} (from {heads.source})"
        )
    return problems


def _not_whole(projection: Projection, head_dim: int, source: str) -> str:
    return (
        f"{projection.leaf} has {projection.out} rows: not a multiple of head_dim {head_dim} — "
        f"{projection.out / head_dim:.4g} heads (head_dim from {source})"
    )


def _attribute_problems(query_heads: int, kv_heads: int, heads: Heads, query: str) -> list[str]:
    """Attributes forward reads that disagree with the heads the widths hold."""
    problems = []
    attributes = heads.attributes
    for name in attention.HEADS_ATTRS:
        if name in attributes and attributes[name] != query_heads:
            problems.append(f"{name} attribute is {attributes[name]} but {query} holds {query_heads} heads of {heads.head_dim}")
            break
    for name in attention.KV_HEADS_ATTRS:
        if name in attributes and attributes[name] != kv_heads:
            problems.append(f"{name} attribute is {attributes[name]} but the keys hold {kv_heads} heads")
            break
    for name in attention.GROUPS_ATTRS:
        if name in attributes and kv_heads and query_heads % kv_heads == 0 and attributes[name] != query_heads // kv_heads:
            problems.append(f"{name} attribute is {attributes[name]} but {query_heads} query heads over {kv_heads} key/value heads make {query_heads // kv_heads}")
            break
    return problems


# -- the finding ------------------------------------------------------------------------


def _finding(ctx: PassContext, broken: list[Checked]) -> Finding:
    names = [c.site.name for c in broken]
    first = broken[0]
    if len(broken) == 1:
        message = f"{first.site.name} no longer holds whole attention heads: {'; '.join(first.problems)}."
    else:
        listed = "; ".join(f"{c.site.name}: {c.problems[0]}" for c in broken[:_SHOWN])
        more = f" (and {len(broken) - _SHOWN} more)" if len(broken) > _SHOWN else ""
        message = f"{len(broken)} attention modules no longer hold whole heads: {listed}{more}."
    failed = next((c for c in broken if c.error), None)
    if failed is not None:
        message += f" The forward pass fails in {failed.site.name}: {failed.error}"
    return Finding(
        kind=KIND,
        severity=Severity.ERROR,
        modules=names,
        message=message,
        evidence={"modules": {c.site.name: _evidence(c) for c in broken[:50]}, "broken_count": len(broken)},
        fix=(
            "Prune whole heads: give torch-pruning every attention projection in num_heads with "
            "prune_num_heads=True and prune_head_dims=False, so q/k/v keep multiples of head_dim and keys and "
            "values keep their grouping; then set the attributes forward reads (below) from the new widths."
        ),
        fix_code=_fix_code(ctx, broken),
    )


def _evidence(checked: Checked) -> dict[str, object]:
    site, heads = checked.site, checked.heads
    widths = {p.leaf: p.out for p in (site.q, site.k, site.v, site.fused) if p is not None}
    if site.o is not None:
        widths[f"{site.o.leaf} (inputs)"] = site.o.inp
    evidence: dict[str, object] = {
        "rows": widths,
        "head_dim": heads.head_dim,
        "num_heads": heads.heads,
        "num_key_value_heads": heads.kv_heads,
        "heads_from": heads.source,
        "problems": checked.problems,
    }
    if checked.error:
        evidence["error"] = checked.error
    return evidence


_FIX_CODE = """\
import torch
import torch_pruning as tp

model = ...  # the dense model, before pruning
example_inputs = {example}
attention = {attention}
num_heads = {{}}
for attn in attention:
{num_heads}pruner = tp.pruner.MetaPruner(
    model,
    example_inputs,
    importance=tp.importance.GroupMagnitudeImportance(p=2),
    pruning_ratio=0.5,
    num_heads=num_heads,
    prune_num_heads=True,    # remove whole heads...
    prune_head_dims=False,   # ...and keep head_dim = {head_dim}
    head_pruning_ratio=0.5,
    ignored_layers=[{ignored}],
)
pruner.step()
for attn in attention:  # what forward reads, from the new widths
{attributes}"""


def _fix_code(ctx: PassContext, broken: list[Checked]) -> str:
    first = broken[0]
    site, heads = first.site, first.heads
    d = heads.head_dim or 64
    example = ctx.model.example_input.code() if ctx.model is not None else "..."
    module_type = ctx.checkpoint.module_types.get(site.name) or _type_in(ctx, site.name)
    if module_type:
        listed = f"[m for m in model.modules() if type(m).__name__ == {module_type!r}]"
    else:
        everything = [s.name for s in ctx.attention_sites()]
        listed = "[model.get_submodule(name) for name in " + repr(everything) + "]"
    q_heads = heads.heads if heads.heads else "..."
    kv_heads = heads.kv_heads if heads.kv_heads else q_heads
    lines, attributes = [], []
    if site.kind == "separate":
        q, k, v = site.q, site.k, site.v
        assert q is not None and k is not None and v is not None
        lines += [f"    num_heads[attn.{q.leaf}] = {q_heads}  # query heads", f"    num_heads[attn.{k.leaf}] = {kv_heads}  # key/value heads", f"    num_heads[attn.{v.leaf}] = {kv_heads}"]
        q_width, k_width = _width(ctx, q), _width(ctx, k)
    else:
        fused = site.fused
        assert fused is not None
        leaf = "in_proj_weight" if site.kind == "in_proj" else fused.leaf
        if site.kind == "in_proj":
            lines.append(f"    num_heads[attn] = {q_heads}  # nn.MultiheadAttention: embed_dim stays a multiple of it")
            q_width = k_width = "attn.in_proj_weight.shape[0] // 3"
        else:
            lines.append(f"    num_heads[attn.{leaf}] = {q_heads}")
            q_width = k_width = f"{_width(ctx, fused)} // {site.parts}"
    if site.kind == "in_proj":  # torch-pruning keeps num_heads here and narrows every head
        attributes += [
            f"    attn.embed_dim = attn.kdim = attn.vdim = {q_width}",
            "    attn.head_dim = attn.embed_dim // attn.num_heads",
        ]
        heads = Heads(heads.head_dim, heads.heads, heads.kv_heads, heads.source)  # no other attribute to set
    for name in attention.HEADS_ATTRS:
        if name in heads.attributes:
            attributes.append(f"    attn.{name} = {q_width} // {d}")
    for name in attention.KV_HEADS_ATTRS:
        if name in heads.attributes:
            attributes.append(f"    attn.{name} = {k_width} // {d}")
    for name in attention.GROUPS_ATTRS:
        if name in heads.attributes:
            attributes.append(f"    attn.{name} = ({q_width}) // ({k_width})")
    for name in ("all_head_size", "split_size", "inner_dim", "attn_dim"):
        if name in heads.attributes:
            attributes.append(f"    attn.{name} = {q_width}")
    if not attributes:
        attributes.append("    pass  # set here any head count the module keeps (num_heads, num_key_value_groups, ...)")
    if site.kind != "in_proj" and (ctx.config is not None or attention.config_dict(ctx.model.module if ctx.model else None) is not None):
        attributes.append("# and in config.json, when every layer keeps the same heads:")
        attributes.append(f"model.config.num_attention_heads = {q_width.replace('attn.', 'attention[0].')} // {d}")
        if site.kind == "separate":
            attributes.append(f"model.config.num_key_value_heads = {k_width.replace('attn.', 'attention[0].')} // {d}")
    return _FIX_CODE.format(
        example=example,
        attention=listed,
        num_heads="".join(line + "\n" for line in lines),
        head_dim=d,
        ignored=_output_layer(ctx),
        attributes="\n".join(attributes),
    )


def _type_in(ctx: PassContext, name: str) -> str | None:
    module = ctx.model.module if ctx.model is not None else None
    if module is None:
        return None
    try:
        return type(module.get_submodule(name)).__name__
    except AttributeError:
        return None


def _width(ctx: PassContext, projection: Projection) -> str:
    layer = ctx.layer(projection.name)
    if layer is not None and layer.type == TRANSPOSED_LINEAR:
        return f"attn.{projection.leaf}.nf"
    return f"attn.{projection.leaf}.out_features"


def _output_layer(ctx: PassContext) -> str:
    """The last linear layer (lm_head, classifier): torch-pruning must keep its outputs."""
    linear = [layer.name for layer in ctx.layers if layer.is_linear and layer.name]
    return f"model.get_submodule({linear[-1]!r})" if linear else ""

