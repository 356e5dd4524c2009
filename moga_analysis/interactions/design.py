"""The sampling design of an interaction run: which orders and which pairs of players.

* :data:`REFERENCE_RATIOS` and :func:`orders_from_ratios`: the order grid of the public reference
  code, m = int((n - 2) * r);
* :func:`reference_pairs`: its pair rule (a random cell and a random neighbour within radius 2).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

__all__ = ["REFERENCE_RATIOS", "orders_from_ratios", "reference_pairs"]

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
