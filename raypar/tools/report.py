"""The split report that ``raypar info`` prints: one row per part, costs, interfaces and the ideal speedup."""
from __future__ import annotations

import math

from rich.table import Table

from ..network.reference import PararealNet


def _fmt_cost(cost: float, measure: str) -> str:
    if measure == "time":
        return f"{cost * 1e3:.2f} ms"
    if measure == "flops":
        return f"{cost / 1e9:.3f} GF"
    return f"{cost:,.0f} p"


def _shape(shape: tuple) -> str:
    return "x".join(str(d) for d in shape)


def split_table(net: PararealNet, batch: int) -> Table:
    m = net.balance_measure
    what = {"time": f"measured fwd+bwd time, batch {batch}", "flops": f"fwd+bwd FLOPs, batch {batch}",
            "params": "parameter count"}[m]
    t = Table(title=f"{net.num_subnets} sub-network(s), K = {net.iterations}, cost = {what}")
    for col in ("part", "blocks", "params", "cost", "out shape", "B/sample", "C/F cost"):
        t.add_column(col, justify="left" if col in ("part", "blocks", "out shape") else "right")
    pre, post = net.pre_profile, net.post_profile
    t.add_row("pre", "-", f"{pre.params:,}", _fmt_cost(pre.cost, m), _shape(pre.out_shape),
              f"{4 * math.prod(pre.out_shape):,}", "-")
    for s in net.segment_info:
        a, b = s.blocks
        ratio = f"{s.coarse_ratio:.1%}" if net.num_subnets > 1 else "-"
        t.add_row(f"F_{s.index}", f"{a}..{b - 1} ({b - a})", f"{s.params:,}", _fmt_cost(s.cost, m),
                  _shape(s.out_shape), f"{s.out_bytes_per_sample:,}", ratio)
    t.add_row("post", "-", f"{post.params:,}", _fmt_cost(post.cost, m), _shape(post.out_shape), "-", "-")
    return t

