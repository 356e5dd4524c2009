"""What every estimator returns: :class:`InteractionResult`, and the noise-corrected mean |I|
(:func:`deconvolved_mean_abs`) that its summaries and the precision target's plan use."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import torch

from ..results import SavableResult
from .sampling import noise_floor

__all__ = ["InteractionResult", "deconvolved_mean_abs"]


# ----------------------------------------------------------------------------------------------
# result type
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class InteractionResult(SavableResult):
    """Interactions of one game.

    orders: LongTensor [n_orders];  pairs: LongTensor [n_pairs, 2];
    values: float64 [n_orders, n_pairs], I^(m)(i,j) (raw, signed, unnormalised);
    stderr: same shape, standard error of each value (0 where exact);
    half_values: [2, n_orders, n_pairs], means of the two halves of each pair's samples;
    n_samples: LongTensor [n_orders], samples (contexts) per pair and order (the fewest any pair
    got, where pairs differ);
    n_evaluations: game evaluations used;  method: "exact", "shared", "independent" or "precision";
    samples_per_pair: LongTensor [n_orders, n_pairs] where the samples differ per pair (a
    precision target allocates them per pair), else None.
    """

    orders: torch.Tensor
    pairs: torch.Tensor
    values: torch.Tensor
    stderr: torch.Tensor
    half_values: torch.Tensor
    n_samples: torch.Tensor
    n_evaluations: int
    n_players: int
    method: str
    seed: Optional[int] = None
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)
    samples_per_pair: Optional[torch.Tensor] = None

    def mean_abs(self) -> torch.Tensor:
        """Raw E_(i,j)|I^(m)| per order ``[n_orders]`` (biased upwards by estimator noise)."""
        return self.values.abs().mean(1)

    def noise_floor(self) -> torch.Tensor:
        """E_(i,j) sqrt(2/pi)*stderr: the mean |I| that pure estimator noise would give."""
        return noise_floor(self.stderr, 1)

    def mean_square_unbiased(self) -> torch.Tensor:
        """Unbiased E_(i,j)[I^2] per order from the product of independent half estimates."""
        return (self.half_values[0] * self.half_values[1]).mean(1)

    def mean_square_raw(self) -> torch.Tensor:
        return (self.values**2).mean(1)

    def noise_ratio(self) -> torch.Tensor:
        """Noise floor / raw mean |I| per order (0 where exact): the precision that
        :class:`PrecisionTarget` targets."""
        floor, signal = self.noise_floor(), self.mean_abs()
        return torch.where(floor > 0, floor / signal.clamp_min(torch.finfo(signal.dtype).tiny), torch.zeros_like(floor))

    def mean_abs_debiased(self) -> torch.Tensor:
        """E_(i,j)|I^(m)| per order corrected for estimator noise (see :func:`deconvolved_mean_abs`)."""
        return deconvolved_mean_abs(self.values, self.stderr)


def _npmle_scaled(x, s, c, noisy, grid_size: int, iterations: int):
    """NPMLE of G for theta_p = I_p / c_p (x_p ~ N(c_p theta_p, s_p^2)), by EM on a grid, per row.

    Returns (mean log-likelihood per noisy pair, up to a constant that does not depend on c;
    posterior mean of |I_p| [B, P])."""
    u = torch.where(noisy, x / c, torch.zeros_like(x))  # the grid spans the theta the data point at
    lo, hi = u.amin(-1).clamp(max=0.0), u.amax(-1).clamp(min=0.0)
    t = torch.linspace(0.0, 1.0, grid_size, dtype=torch.float64)
    grid = torch.cat([lo[:, None] + (hi - lo)[:, None] * t, torch.zeros_like(lo)[:, None]], 1)  # [B, G]
    logL = -0.5 * ((x[..., None] - c[..., None] * grid[:, None, :]) / s[..., None]) ** 2
    top = logL.amax(-1, keepdim=True)
    L = (logL - top).exp()  # [B, P, G]; the 1/s_p factor does not depend on c
    weight = noisy.double() / noisy.sum(-1, keepdim=True)  # the mean over noisy pairs
    w = torch.full(grid.shape, 1.0 / grid.shape[1], dtype=torch.float64)
    for _ in range(int(iterations)):
        f = (L * w[:, None, :]).sum(-1, keepdim=True)
        post = L * w[:, None, :] / f
        w = (post * weight[..., None]).sum(1)
    loglik = ((f[..., 0].log() + top[..., 0]) * weight).sum(-1)
    return loglik, c * (post * grid.abs()[:, None, :]).sum(-1)


def deconvolved_mean_abs(
    values: torch.Tensor,
    stderr: torch.Tensor,
    *,
    alphas=(0.0, 0.25, 0.5, 0.75, 1.0),
    grid_size: int = 80,
    iterations: int = 200,
) -> torch.Tensor:
    """Mean |I| over the last dimension (pairs), corrected for estimator noise.

    Model: each estimate is ``x_p = I_p + e_p`` with ``e_p ~ N(0, s_p^2)`` and ``s_p`` its stderr
    (the mean of many i.i.d. second differences is close to normal).  The raw mean |x| is biased
    upwards (by up to ``sqrt(2/pi) s`` where |I| << s), and no unbiased estimator of |I| exists for
    a normal observation (|I| is not smooth at 0), so the correction is an empirical-Bayes one:
    ``I_p = s_p^alpha theta_p`` with the theta_p drawn from one distribution G, estimated by
    nonparametric maximum likelihood (Kiefer-Wolfowitz NPMLE on a grid, fitted by EM), and the
    result is the mean over pairs of the posterior mean of |I_p|.  ``alpha`` says how the size of
    an interaction goes with its noise (0: the interactions are exchangeable whatever their stderr;
    1: their signal-to-noise ratios are; on a real network the pairs with large interactions are
    also the noisy ones); it is chosen per row among ``alphas`` by the marginal likelihood.
    Consistent as the number of pairs grows; its residual bias is tested against closed forms in
    tests/test_precision.py.  Exact entries (``s_p = 0``) enter as |x_p|.

    ``values``, ``stderr``: ``[..., n_pairs]``; returns ``[...]`` (float64).
    """
    x = torch.as_tensor(values, dtype=torch.float64)
    s = torch.as_tensor(stderr, dtype=torch.float64)
    if x.shape != s.shape or x.dim() == 0:
        raise ValueError(f"values and stderr must share a shape [..., n_pairs]: {tuple(x.shape)}, {tuple(s.shape)}")
    lead = x.shape[:-1]
    x, s = x.reshape(-1, x.shape[-1]), s.reshape(-1, s.shape[-1])
    noisy = s > 0
    out = torch.where(noisy, torch.zeros_like(x), x.abs()).sum(-1)
    rows = noisy.any(-1).nonzero().flatten()
    if len(rows):
        nr = noisy[rows]
        sr = torch.where(nr, s[rows], torch.ones_like(s[rows]))
        xr = torch.where(nr, x[rows], torch.zeros_like(sr))
        A, B = len(alphas), len(rows)
        # every alpha at once: rows stacked alpha-major
        c = torch.cat([sr ** float(a) for a in alphas])
        ll, post_abs = _npmle_scaled(xr.repeat(A, 1), sr.repeat(A, 1), c, nr.repeat(A, 1), grid_size, iterations)
        pick = ll.view(A, B).argmax(0)  # the first of equal likelihoods
        best = post_abs.view(A, B, -1)[pick, torch.arange(B)]
        out[rows] += torch.where(nr, best, torch.zeros_like(best)).sum(-1)
    return (out / x.shape[-1]).reshape(lead)
