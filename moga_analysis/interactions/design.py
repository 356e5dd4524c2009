"""The sampling design of an interaction run: which orders and which pairs of players.

* :data:`REFERENCE_RATIOS` and :func:`orders_from_ratios`: the order grid of the public reference
  code, m = int((n - 2) * r);
* :func:`reference_pairs`: its pair rule (a random cell and a random neighbour within radius 2);
* :func:`map_pairs` and :func:`pair_incidence`: pair sets that cover every cell (per-cell maps).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

__all__ = [
    "REFERENCE_RATIOS",
    "orders_from_ratios",
    "reference_pairs",
    "MAP_NEIGHBOURHOODS",
    "map_pair_offsets",
    "map_pairs",
    "pair_incidence",
]

#: the order grid of the public reference code: m = int((n - 2) * r)
REFERENCE_RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def orders_from_ratios(ratios: Sequence[float], n_players: int) -> List[int]:
    """m = int((n - 2) * r) as in the reference code (duplicates removed, order kept)."""
    out: List[int] = []
    for r in ratios:
        if not 0.0 <= float(r) <= 1.0:
            raise ValueError(f"ratio {r} is outside [0, 1]")
        m = int((n_players - 2) * float(r))
        if m not in out:
            out.append(m)
    return out


def reference_pairs(
    grid: int, n_pairs: int, radius: int = 2, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """The reference pair rule: i uniform over the ``grid x grid`` cells, j uniform among the cells
    at Chebyshev distance 1..``radius`` of i that lie inside the grid (24 away from the border
    for radius 2).  Returns LongTensor ``[n_pairs, 2]`` (row-major cell indices)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n = grid * grid
    out = torch.zeros(n_pairs, 2, dtype=torch.long)
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if (dy, dx) != (0, 0)]
    for p in range(n_pairs):
        i = int(torch.randint(n, (1,), generator=gen))
        y, x = divmod(i, grid)
        nbrs = [(y + dy) * grid + (x + dx) for dy, dx in offsets if 0 <= y + dy < grid and 0 <= x + dx < grid]
        j = nbrs[int(torch.randint(len(nbrs), (1,), generator=gen))]
        out[p, 0], out[p, 1] = i, j
    return out


# ---------------------------------------------------------------------------------------------
# map pairs: pair sets that cover every cell of the grid (per-cell interaction maps)
# ---------------------------------------------------------------------------------------------
#: neighbourhoods of :func:`map_pairs`
MAP_NEIGHBOURHOODS = ("right_down", "chebyshev")


def map_pair_offsets(radius: int = 1, neighbourhood: str = "right_down") -> List[tuple]:
    """The offsets ``(dy, dx)`` from a cell i to its partners j in :func:`map_pairs` (each
    unordered pair once: ``dy > 0``, or ``dy == 0`` and ``dx > 0``).

    * ``"right_down"``: the cells 1..``radius`` to the right and 1..``radius`` below;
    * ``"chebyshev"``: every cell at Chebyshev distance 1..``radius``.
    """
    r = int(radius)
    if r < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    if neighbourhood == "right_down":
        return [(0, d) for d in range(1, r + 1)] + [(d, 0) for d in range(1, r + 1)]
    if neighbourhood == "chebyshev":
        return [(dy, dx) for dy in range(0, r + 1) for dx in range(-r, r + 1) if dy > 0 or dx > 0]
    raise ValueError(f"unknown neighbourhood {neighbourhood!r}; choose one of {MAP_NEIGHBOURHOODS}")


def map_pairs(grid: int, radius: int = 1, neighbourhood: str = "right_down") -> torch.Tensor:
    """Pairs that cover every cell of a ``grid x grid`` partition, for per-cell interaction maps.

    ``"right_down"`` (default): each cell with its right and its lower neighbour (with ``radius``
    r > 1, the r cells to the right and the r cells below), ``2 * sum_{d=1..r} grid * (grid - d)``
    pairs (112 for grid 8, r = 1); interior cells belong to 4 pairs at r = 1, corners to 2.
    ``"chebyshev"``: every unordered pair of cells at Chebyshev distance 1..r, once
    (``sum over offsets of (grid - |dy|) * (grid - |dx|)``; 210 for grid 8, r = 1).

    Returns LongTensor ``[n_pairs, 2]`` of row-major cell indices with ``i < j``, sorted by i, then
    by the offset's position in :func:`map_pair_offsets`.  Deterministic (no randomness).
    """
    g = int(grid)
    if g < 2:
        raise ValueError(f"a map needs a grid of at least 2 x 2, got {grid}")
    offsets = map_pair_offsets(radius, neighbourhood)
    if int(radius) >= g:
        raise ValueError(f"radius {radius} must be smaller than the grid ({g})")
    out = []
    for y in range(g):
        for x in range(g):
            for dy, dx in offsets:
                if 0 <= y + dy < g and 0 <= x + dx < g:
                    out.append((y * g + x, (y + dy) * g + (x + dx)))
    return torch.tensor(out, dtype=torch.long)


def pair_incidence(pairs, n_cells: int) -> torch.Tensor:
    """Which pairs each cell belongs to: bool ``[n_cells, n_pairs]``, True where the cell is one of
    the pair's two players (``incidence[c].nonzero()`` lists cell c's pairs; ``.sum(1)`` counts them)."""
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be [n_pairs, 2], got shape {list(pairs.shape)}")
    if len(pairs) and (int(pairs.min()) < 0 or int(pairs.max()) >= int(n_cells)):
        raise ValueError(f"pair indices must lie in [0, {n_cells})")
    inc = torch.zeros(int(n_cells), len(pairs), dtype=torch.bool)
    cols = torch.arange(len(pairs))
    inc[pairs[:, 0], cols] = True
    inc[pairs[:, 1], cols] = True
    return inc
