"""Cooperative games over sets of players: the image-masking game and synthetic games.

A *game* is any callable ``game(masks: bool Tensor[k, n_players]) -> float Tensor[k]`` giving the
value v(S) of each coalition S (row ``r`` of ``masks`` is the indicator of S).  The estimators in
:mod:`moga_analysis.interactions` only ever see this call shape.

* :class:`ImageMaskingGame`: players are the cells of a ``grid x grid`` partition of an image
  (row-major); an absent cell shows the baseline.  Masked images are built on the model's device
  (``baseline + upsample(mask) * (image - baseline)``), each batch is reduced on the device to one
  scalar per image (log-odds, logit or log-probability of the target class).
* :class:`HarsanyiGame`: v(S) = sum_{T subset of S} a(T) for a sparse set of coalitions T with
  Harsanyi dividends a(T); its multi-order interactions have a closed form, used as test truth.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..runtime import model_device, uses_channels_last
from .sampling import check_masks

__all__ = ["ImageMaskingGame", "HarsanyiGame", "OUTPUTS", "BASELINES"]

log = logging.getLogger(__name__)

OUTPUTS = ("log_odds", "logit", "log_prob")
BASELINES = ("mean", "zero", "blur")


class ImageMaskingGame:
    """v(S) = output of ``model`` on ``image`` with the cells outside S replaced by a baseline.

    Args:
        model: classifier mapping ``[B,C,H,W]`` to logits ``[B,K]``; used as is (put it in eval
            mode and on its device first; the game's work runs on the model's device and dtype).
        image: one preprocessed (normalised) image ``[C,H,W]``.
        target: class index; ``None`` = the class the model predicts on the unmasked image.
        grid: players are the cells of a ``grid x grid`` partition (``n_players = grid**2``,
            row-major); ``grid`` must divide both H and W.
        baseline: ``"mean"`` (the dataset mean colour, i.e. 0 after normalisation), ``"zero"``
            (black, i.e. ``-mean/std`` per channel), ``"blur"`` (Gaussian blur of the image,
            ``blur_sigma`` pixels) or a tensor ``[C,H,W]`` / ``[C,1,1]`` in normalised units.
        output: ``"log_odds"`` (``z_y - logsumexp_{c != y} z_c``), ``"logit"`` (``z_y``) or
            ``"log_prob"`` (``log softmax(z)_y``).
        batch_size: masked images per forward pass.
        mean, std: normalisation constants for the ``"zero"`` baseline (default: the model's
            pretrained cfg, else ImageNet's).
        channels_last: feed the forward passes channels-last inputs; None (default) follows the
            model (channels-last weights, e.g. after :func:`moga_analysis.runtime.prepare_model`,
            get channels-last inputs), so model and input always share one memory format.

    ``game(masks)`` takes a bool tensor ``[k, n_players]`` (any device) and returns a float64 CPU
    tensor ``[k]``.  ``game.n_evaluations`` counts the masked images evaluated so far.
    """

    def __init__(
        self,
        model: nn.Module,
        image: torch.Tensor,
        target: Optional[int] = None,
        grid: int = 14,
        baseline: Union[str, torch.Tensor] = "mean",
        output: str = "log_odds",
        batch_size: int = 64,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        blur_sigma: float = 10.0,
        channels_last: Optional[bool] = None,
    ):
        if image.dim() != 3:
            raise ValueError(f"image must be [C,H,W], got shape {list(image.shape)}")
        C, H, W = image.shape
        grid = int(grid)
        if grid < 1 or H % grid or W % grid:
            raise ValueError(f"grid {grid} does not divide the input size {H}x{W}; choose a divisor of both")
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; choose one of {OUTPUTS}")
        if int(batch_size) < 1:
            raise ValueError("batch_size must be >= 1")
        if model.training:
            log.warning("ImageMaskingGame: the model is in training mode; call model.eval() first")
        self.model = model
        self.device = model_device(model)
        self.dtype = next((p.dtype for p in model.parameters()), torch.float32)
        self.grid = grid
        self.n_players = grid * grid
        self.cell = (H // grid, W // grid)
        self.output = output
        self.batch_size = int(batch_size)
        self.channels_last = uses_channels_last(model) if channels_last is None else bool(channels_last)
        self.n_evaluations = 0
        self.image = image.detach().to(self.device, self.dtype)
        self.baseline = self._make_baseline(baseline, mean, std, blur_sigma).to(self.device, self.dtype)
        self.delta = self.image - self.baseline
        self.num_classes: Optional[int] = None
        if target is None:
            logits = self._forward(self.image[None])
            self.num_classes = logits.shape[1]
            target = int(logits[0].argmax())
        self.target = int(target)
        if self.num_classes is None:
            self.num_classes = int(self._forward(self.image[None]).shape[1])
        if not 0 <= self.target < self.num_classes:
            raise ValueError(f"target {self.target} is out of range for a model with {self.num_classes} classes")

    # -- construction -------------------------------------------------------------------------
    def _make_baseline(self, baseline, mean, std, sigma) -> torch.Tensor:
        img = self.image
        if isinstance(baseline, torch.Tensor):
            b = baseline.detach().to(img.device, img.dtype)
            if b.dim() == 1:
                b = b[:, None, None]
            try:
                return torch.broadcast_to(b, img.shape).clone()
            except RuntimeError:
                raise ValueError(
                    f"baseline tensor of shape {list(b.shape)} does not fit image {list(img.shape)}"
                ) from None
        if baseline == "mean":
            return torch.zeros_like(img)
        if baseline == "zero":
            cfg = getattr(self.model, "pretrained_cfg", None) or {}
            mean = mean if mean is not None else cfg.get("mean", (0.485, 0.456, 0.406))
            std = std if std is not None else cfg.get("std", (0.229, 0.224, 0.225))
            m = torch.as_tensor(mean, dtype=img.dtype, device=img.device)[:, None, None]
            s = torch.as_tensor(std, dtype=img.dtype, device=img.device)[:, None, None]
            return torch.broadcast_to(-m / s, img.shape).clone()
        if baseline == "blur":
            from ..imaging import gaussian_blur

            return gaussian_blur(img, sigma, padding="replicate")
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {BASELINES} or pass a tensor")

    # -- evaluation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def masked_images(self, masks: torch.Tensor) -> torch.Tensor:
        """The masked images ``[k,C,H,W]`` for bool ``masks [k, n_players]`` (on the device)."""
        masks = torch.as_tensor(masks).to(self.device)
        if masks.dim() != 2 or masks.shape[1] != self.n_players:
            raise ValueError(f"masks must be [k, {self.n_players}], got {list(masks.shape)}")
        k = masks.shape[0]
        ch, cw = self.cell
        m = masks.to(self.dtype).view(k, 1, self.grid, 1, self.grid, 1)
        m = m.expand(k, 1, self.grid, ch, self.grid, cw).reshape(k, 1, self.grid * ch, self.grid * cw)
        return torch.addcmul(self.baseline, m, self.delta)

    def reduce(self, logits: torch.Tensor) -> torch.Tensor:
        """One scalar per row of ``logits [k, K]`` (computed in float32 or wider, on the device)."""
        z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        y = self.target
        if self.output == "logit":
            return z[:, y]
        if self.output == "log_prob":
            return z[:, y] - torch.logsumexp(z, dim=1)
        others = torch.cat([z[:, :y], z[:, y + 1 :]], dim=1)
        return z[:, y] - torch.logsumexp(others, dim=1)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        masks = check_masks(masks, self.n_players)
        out = []
        masks = masks.to(self.device)
        for start in range(0, masks.shape[0], self.batch_size):
            chunk = masks[start : start + self.batch_size]
            with torch.inference_mode():
                out.append(self.reduce(self._forward(self.masked_images(chunk))))
        self.n_evaluations += masks.shape[0]
        if not out:
            return torch.zeros(0, dtype=torch.float64)
        return torch.cat(out).to("cpu", torch.float64)

    def __repr__(self) -> str:
        return (
            f"ImageMaskingGame(grid={self.grid}, n_players={self.n_players}, target={self.target}, "
            f"output={self.output!r}, batch_size={self.batch_size}, device={self.device})"
        )


class HarsanyiGame:
    """A game with sparse Harsanyi dividends: v(S) = sum over listed T with T subset of S of a(T).

    ``coalitions`` is a bool tensor ``[n_terms, n_players]`` (row t = indicator of T_t) and
    ``dividends`` a float tensor ``[n_terms]``.  ``noise`` adds independent Gaussian noise of that
    standard deviation to every evaluation (from ``generator``), for testing noisy estimators.
    """

    def __init__(
        self,
        coalitions: torch.Tensor,
        dividends: torch.Tensor,
        noise: float = 0.0,
        generator: Optional[torch.Generator] = None,
    ):
        self.coalitions = torch.as_tensor(coalitions, dtype=torch.bool)
        self.dividends = torch.as_tensor(dividends, dtype=torch.float64)
        if self.coalitions.dim() != 2 or self.coalitions.shape[0] != self.dividends.shape[0]:
            raise ValueError("coalitions must be [n_terms, n_players] and dividends [n_terms]")
        self.n_players = self.coalitions.shape[1]
        self.sizes = self.coalitions.sum(1)
        self.noise = float(noise)
        self.generator = generator
        self.n_evaluations = 0

    @classmethod
    def random(
        cls,
        n_players: int,
        n_terms: int,
        max_size: int = 4,
        seed: int = 0,
        must_include: Sequence[Sequence[int]] = (),
        scale: float = 1.0,
    ) -> "HarsanyiGame":
        """Random dividends ~ N(0, scale^2) on ``n_terms`` random coalitions of size 1..max_size.

        ``must_include``: player tuples (e.g. the pairs under test) from which extra coalitions
        are grown, so that the interactions of those pairs are not all zero.
        """
        g = torch.Generator().manual_seed(seed)
        rows = []
        for _ in range(n_terms):
            size = int(torch.randint(1, max_size + 1, (1,), generator=g))
            idx = torch.randperm(n_players, generator=g)[:size]
            rows.append(idx)
        for base in must_include:
            base = torch.as_tensor(list(base))
            for extra in range(0, max_size - len(base) + 1):
                others = torch.randperm(n_players, generator=g)
                others = others[~torch.isin(others, base)][:extra]
                rows.append(torch.cat([base, others]))
        C = torch.zeros(len(rows), n_players, dtype=torch.bool)
        for r, idx in enumerate(rows):
            C[r, idx] = True
        a = torch.randn(len(rows), generator=g, dtype=torch.float64) * scale
        return cls(C, a)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        masks = torch.as_tensor(masks, dtype=torch.bool).cpu()
        inside = (masks.double() @ self.coalitions.double().T) == self.sizes.double()  # [k, terms]
        v = inside.double() @ self.dividends
        if self.noise:
            v = v + self.noise * torch.randn(v.shape, generator=self.generator, dtype=torch.float64)
        self.n_evaluations += masks.shape[0]
        return v

    def interactions(self, pairs: torch.Tensor, orders: Sequence[int]) -> torch.Tensor:
        """Closed form ``I^(m)(i,j) = sum_{T containing i,j} a(T) C(n-|T|, m-|T|+2) / C(n-2, m)``.

        Returns float64 ``[n_orders, n_pairs]``.
        """
        pairs = torch.as_tensor(pairs, dtype=torch.long)
        n = self.n_players
        out = torch.zeros(len(orders), len(pairs), dtype=torch.float64)
        for p, (i, j) in enumerate(pairs.tolist()):
            terms = (self.coalitions[:, i] & self.coalitions[:, j]).nonzero().flatten().tolist()
            for o, m in enumerate(orders):
                total = 0.0
                for t in terms:
                    s = int(self.sizes[t])
                    if 0 <= m - s + 2 <= n - s:
                        total += float(self.dividends[t]) * math.comb(n - s, m - s + 2) / math.comb(n - 2, m)
                out[o, p] = total
        return out
