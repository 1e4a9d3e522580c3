"""Groups from confirmed pairs, without the chains that join two different pictures' copies.

Joining every confirmed pair (single linkage) lets one mistaken pair merge two groups whole: the copies
of one photo and the copies of another that happens to look like it. Here a *link* that is the only
path between two parts of a group, each of at least two pictures (a bridge, in graph terms), is cut,
weakest first, unless the two pictures it joins are all but identical (``STRONG``): a true copy is
usually linked to its original and to its other copies, while a mistaken pair is usually alone. A group
of a picture and one copy, or a copy linked to a group by one pair, is left as it is. Bridges are found
with Tarjan's depth-first search, in time linear in the links.
"""

from __future__ import annotations

import math
from typing import Callable

Adjacency = dict[int, dict[int, float]]
STRONG = 0.99  # a link at least this alike is never cut (docs/duplicates.md: mistaken pairs measured below it)


class LinkGraph:
    """Pictures (and stand-ins for stored groups) joined by weighted links."""

    def __init__(self, is_picture: Callable[[int], bool]) -> None:
        self.is_picture = is_picture
        self.links: Adjacency = {}

    def link(self, a: int, b: int, weight: float = math.inf) -> None:
        """Join ``a`` and ``b`` by a link of ``weight`` (how alike they are; ``inf`` is never cut)."""
        if a == b:
            return
        self.links.setdefault(a, {})[b] = max(weight, self.links.get(a, {}).get(b, -math.inf))
        self.links.setdefault(b, {})[a] = self.links[a][b]

    def groups(self) -> list[list[int]]:
        """The pictures of each group of two or more, after cutting weak bridges."""
        while True:
            bridges = [bridge for bridge in _splitting_bridges(self.links, self.is_picture) if bridge[0] < STRONG]
            if not bridges:
                break
            _, a, b = min(bridges)
            del self.links[a][b], self.links[b][a]
        found = []
        seen: set[int] = set()
        for start in self.links:
            if start in seen:
                continue
            component, frontier = [], [start]
            seen.add(start)
            while frontier:
                node = frontier.pop()
                component.append(node)
                for other in self.links[node]:
                    if other not in seen:
                        seen.add(other)
                        frontier.append(other)
            pictures = sorted(node for node in component if self.is_picture(node))
            if len(pictures) > 1:
                found.append(pictures)
        return found


def _splitting_bridges(links: Adjacency, is_picture: Callable[[int], bool]) -> list[tuple[float, int, int]]:
    """(weight, a, b) of each link whose removal splits its group into two parts of two or more pictures."""
    order: dict[int, int] = {}
    low: dict[int, int] = {}
    inside: dict[int, int] = {}  # pictures in each node's depth-first subtree
    result = []
    for root in links:
        if root in order:
            continue
        found = []
        order[root] = low[root] = len(order)
        inside[root] = int(is_picture(root))
        stack = [(root, root, iter(links[root]))]
        while stack:
            node, parent, neighbours = stack[-1]
            for other in neighbours:
                if other == parent:
                    continue
                if other in order:
                    low[node] = min(low[node], order[other])
                    continue
                order[other] = low[other] = len(order)
                inside[other] = int(is_picture(other))
                stack.append((other, node, iter(links[other])))
                break
            else:
                stack.pop()
                if node != root:
                    low[parent] = min(low[parent], low[node])
                    inside[parent] += inside[node]
                    if low[node] > order[parent]:
                        found.append((links[parent][node], parent, node, inside[node]))
        total = inside[root]
        result += [(weight, a, b) for weight, a, b, below in found if below >= 2 and total - below >= 2]
    return result
