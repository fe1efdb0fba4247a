"""Dependency graphs between services (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from graphlib import CycleError, TopologicalSorter


def find_cycle(edges: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle as ``[a, b, ..., a]``, or ``None`` when the graph is acyclic.

    ``edges`` maps each node to the nodes it depends on. Self-loops count as
    cycles; edges to unknown nodes are ignored (they are reported elsewhere).
    """
    known = set(edges)
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for node, deps in edges.items():
        sorter.add(node, *(d for d in deps if d in known))
    try:
        sorter.prepare()
    except CycleError as exc:
        cycle: list[str] = list(exc.args[1])
        # graphlib reports the cycle walking dependency edges backwards; show "a depends on b".
        return cycle[::-1]
    return None
