"""A backward pass in two halves: the input gradient now, the weight gradients later.

A fine actor's ``dL/du`` is what the driver waits for; its parameter gradients are needed only by its own optimizer
step. :func:`input_grad` runs the part of the backward that leads to the input (``B``: for a convolution, the
gradient w.r.t. its input, not its weight) and keeps, at each autograd node where a parameter's path leaves the
input's path, the gradient that reached it. :meth:`WeightGrads.run` later runs from those nodes to the parameters
only (``W``: the weight-gradient kernels, and any node between them and the parameter, e.g. autocast's cast) and
accumulates into ``.grad`` as ``backward`` would have. Nothing is computed twice but what lies between such a node and
its parameters. This is the B/W split of zero-bubble pipeline schedules (Qi et al. 2023, and
``torch.distributed.pipelining``), here so that the actor answers before its weight gradients are done and computes
them while the driver runs its own backward and the next step's coarse sweep.
"""
from __future__ import annotations

from collections import defaultdict, deque

import torch
from torch.autograd.graph import GradientEdge, Node


def _node(t: torch.Tensor) -> Node:
    """The autograd node of a tensor: its grad_fn, or for a leaf its gradient accumulator."""
    if t.grad_fn is not None:
        return t.grad_fn
    return t.view_as(t).grad_fn.next_functions[0][0]


def _consumers(root: Node) -> dict[Node, list[Node]]:
    """For every node reachable from ``root``: the nodes whose backward feeds it (the graph's edges reversed)."""
    up: dict[Node, list[Node]] = defaultdict(list)
    seen, q = {root}, deque([root])
    while q:
        node = q.popleft()
        for nxt, _ in node.next_functions:
            if nxt is not None:
                up[nxt].append(node)
                if nxt not in seen:
                    seen.add(nxt)
                    q.append(nxt)
    return up


def _above(start: Node, up: dict, stop: set | None = None) -> tuple[set, set]:
    """The nodes reached from ``start`` along reversed edges, and those of ``stop`` met on the way (not passed)."""
    stop = stop or set()
    seen, met, q = {start}, set(), deque([start])
    while q:
        for node in up.get(q.popleft(), ()):
            if node in stop:
                met.add(node)
            elif node not in seen:
                seen.add(node)
                q.append(node)
    return seen, met


class WeightGrads:
    """The deferred half: per group of parameters, the nodes where their paths meet the input's and the gradients
    that reached those nodes."""

    def __init__(self, groups: list[dict]):
        self.groups = groups

    def run(self) -> None:
        """Accumulate every parameter's gradient into its ``.grad`` and free what the graph kept for it."""
        for group in self.groups:
            nodes, saved = group["nodes"], group["grads"]
            edges, grads = [], []
            for node in nodes:
                for i, g in enumerate(saved.get(node, ())):
                    if g is not None:
                        edges.append(GradientEdge(node, i))
                        grads.append(g)
            if not edges:
                continue
            handles = []
            if len(nodes) > 1:     # one such node below another: the saved gradient already holds what flows down
                handles = [n.register_prehook(lambda _, s=saved.get(n): s) for n in nodes if n in saved]
            try:
                params = group["params"]
                dws = torch.autograd.grad(edges, [GradientEdge(_node(p), 0) for p in params], grads,
                                          allow_unused=True)
            finally:
                for h in handles:
                    h.remove()
            for p, dw in zip(params, dws):
                if dw is not None:
                    p.grad = dw if p.grad is None else p.grad + dw
        self.groups = []


def input_grad(out: torch.Tensor, grad: torch.Tensor, u: torch.Tensor,
               params: list[torch.Tensor]) -> tuple[torch.Tensor | None, WeightGrads]:
    """``dL/du`` for ``out`` receiving ``grad`` (the graph kept), and the parameters' half for later. Vectors (biases,
    normalization scales: a reduction the input's backward makes anyway) and any parameter whose path never meets the
    input's get their gradient now, in the same pass; only weight matrices and kernels wait."""
    params = [p for p in params if p.requires_grad]
    now: list[torch.Tensor] = [p for p in params if p.dim() <= 1]
    params = [p for p in params if p.dim() > 1]
    root = _node(out)
    up = _consumers(root)
    u_node = _node(u)
    on_path, _ = _above(u_node, up)              # every node whose backward leads to u
    by_node: dict[Node, dict] = {}
    groups: list[dict] = []
    for p in params:
        acc = _node(p)
        if acc not in up:                         # not used by this graph at all
            continue
        _, met = _above(acc, up, on_path)
        if not met:
            now.append(p)
            continue
        merged = list({id(g): g for g in (by_node[n] for n in met if n in by_node)}.values())   # each group once
        group = merged[0] if merged else {"params": [], "nodes": set(), "grads": {}}
        for other in merged[1:]:
            group["params"] += other["params"]
            group["nodes"] |= other["nodes"]
            groups.remove(other)
        if not merged:
            groups.append(group)
        group["params"].append(p)
        group["nodes"] |= met
        for n in group["nodes"]:
            by_node[n] = group
    handles = []
    for g in groups:
        g["nodes"] = list(g["nodes"])
        for n in g["nodes"]:
            handles.append(n.register_prehook(lambda grads, n=n, g=g: g["grads"].__setitem__(n, grads)))
    try:
        res = torch.autograd.grad([out], [u, *now], [grad], retain_graph=True, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    for p, dw in zip(now, res[1:]):
        if dw is not None:
            p.grad = dw if p.grad is None else p.grad + dw
    return res[0], WeightGrads(groups)
