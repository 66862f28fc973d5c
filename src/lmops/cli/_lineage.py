"""Lineage graphs as rich trees (``lmops assets lineage``, ``lmops trace``)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.tree import Tree

from lmops.cli._output import console
from lmops.store.types import LineageGraph


def label(g: LineageGraph, ref: str, role: str | None = None) -> str:
    """One node: its role on the edge, ref, kind, its status unless READY (a DELETED input
    stays in the lineage, but ``assets path`` no longer hands it out), producing run and,
    for a local file or folder a job read, its path."""
    n = g.nodes[ref]
    run = g.runs.get(ref)
    extra = f" [red]{n.status.value}[/]" if n.status.value != "READY" else ""
    extra += f" [dim]run {run}[/]" if run else ""
    if n.kind == "external":
        extra += f" {escape(str(n.metadata.get('path')))}"
    return f"{'[cyan]' + role + '[/] ' if role else ''}[bold]{ref}[/] ({n.kind}){extra}"


def print_tree(g: LineageGraph, title: str, *, up: bool = True) -> None:
    """The upstream (``up``) or downstream edges of ``g`` from its root, or ``TITLE: none``."""
    edges = g.upstream if up else g.downstream
    tree = Tree(f"{title} of {label(g, g.root)}")

    def grow(node: Tree, r: str, seen: frozenset[str], edges: list[Any] = edges) -> None:
        for e in edges:
            src, dst = (e.child, e.parent) if up else (e.parent, e.child)
            if src == r and dst not in seen:
                grow(node.add(label(g, dst, e.role)), dst, seen | {dst})

    grow(tree, g.root, frozenset({g.root}))
    console.print(tree if edges else f"{title}: none")
