"""shapiq both ways: our games as ``shapiq.Game`` objects, and shapiq games as our games.

A game of ours is any callable ``game(masks: bool Tensor[k, n]) -> Tensor[k]`` (the image-masking
game :class:`~moga_analysis.interactions.games.ImageMaskingGame`, :class:`HarsanyiGame`, ...); a
shapiq game is a :class:`shapiq.Game` whose call takes a bool ``numpy`` coalition matrix
``[k, n]`` and returns ``numpy`` values ``[k]``.

* :func:`to_shapiq_game` wraps one of ours as a :class:`shapiq.Game`, so that shapiq's
  approximators (KernelSHAP-IQ, SPEX, ...) and its :class:`shapiq.ExactComputer` (Shapley
  interactions, Moebius transform) run on a MogaNet / timm image game.
* :func:`from_shapiq_game` wraps a shapiq game (their synthetic games such as ``SOUM``, their
  tabular and benchmark games, any :class:`shapiq.Game`) as one of ours, so that
  :func:`~moga_analysis.interactions.exact_interactions`,
  :func:`~moga_analysis.interactions.estimate_interactions`, J^(m) and the maps run on it.

Both keep the player order (column ``i`` of a coalition matrix is player ``i`` on both sides; for
the image game, cell ``i`` of the row-major grid) and pass a whole batch of coalitions in one call
(``batch_size`` splits it when asked).

**Values are the same numbers on both sides.**  shapiq's ``Game.__call__`` subtracts
``normalization_value`` (its "normalised / centred" game has v(empty) = 0).  :func:`to_shapiq_game`
does *not* normalise by default (``normalize=False``: ``normalization_value = 0``), so the shapiq
game returns exactly what the wrapped game returns and the Moebius coefficient of the empty set is
v(empty); pass ``normalize=True`` to get shapiq's centred game (one extra evaluation of the empty
coalition).  :func:`from_shapiq_game` returns exactly what calling the shapiq game returns, i.e. with
the shapiq game's own normalisation applied when it has one.  A constant shift changes no
interaction of order m (I^(m)(i,j) is a mean of second differences) and no J^(m), so either choice
gives the same interactions; only raw values and a(empty) differ.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import torch

from .sampling import check_masks

__all__ = ["to_shapiq_game", "from_shapiq_game", "MogaGame"]


def _shapiq():
    try:
        import shapiq
    except ImportError as err:  # pragma: no cover - shapiq is a dev / samples dependency
        raise RuntimeError("the shapiq interop needs shapiq: pip install moga_analysis[samples]") from err
    return shapiq


def _game_device(game: Any) -> Optional[torch.device]:
    """Where the game wants its masks: ``game.device`` if it has one (the image game), else None."""
    dev = getattr(game, "device", None)
    if isinstance(dev, (str, torch.device)):
        return torch.device(dev)
    return None


class MogaGame:
    """One of our games around a shapiq game: bool masks ``[k, n]`` (any device) in, float64 CPU
    values ``[k]`` out, equal to ``shapiq_game(masks.numpy())`` (shapiq's normalisation included).

    ``n_players`` and ``n_evaluations`` (coalitions evaluated through this wrapper) are public;
    ``shapiq_game`` is the wrapped game.  Build it with :func:`from_shapiq_game`.
    """

    def __init__(self, shapiq_game: Any, n_players: Optional[int] = None, batch_size: Optional[int] = None):
        n = n_players if n_players is not None else getattr(shapiq_game, "n_players", None)
        if n is None:
            raise ValueError("n_players is needed for a game without an n_players attribute")
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError("batch_size must be >= 1 (or None: one call per batch of masks)")
        self.shapiq_game = shapiq_game
        self.n_players = int(n)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.n_evaluations = 0

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        masks = check_masks(masks, self.n_players)
        coalitions = masks.detach().cpu().numpy()
        k = coalitions.shape[0]
        if k == 0:
            return torch.zeros(0, dtype=torch.float64)
        step = k if self.batch_size is None else self.batch_size
        out = [np.asarray(self.shapiq_game(coalitions[s : s + step]), dtype=np.float64).reshape(-1)
               for s in range(0, k, step)]
        values = np.concatenate(out)
        if values.shape[0] != k:
            raise ValueError(f"the shapiq game returned {values.shape[0]} values for {k} coalitions")
        self.n_evaluations += k
        return torch.from_numpy(values)

    def __repr__(self) -> str:
        return f"MogaGame({type(self.shapiq_game).__name__}, n_players={self.n_players})"


def _make_shapiq_game_class():
    shapiq = _shapiq()

    class ShapiqGame(shapiq.Game):
        """A :class:`shapiq.Game` around one of our games (see :func:`to_shapiq_game`)."""

        def __init__(
            self,
            game: Callable[[torch.Tensor], torch.Tensor],
            n_players: int,
            *,
            normalize: bool = False,
            batch_size: Optional[int] = None,
            player_names: Optional[List[str]] = None,
            verbose: bool = False,
        ):
            if batch_size is not None and int(batch_size) < 1:
                raise ValueError("batch_size must be >= 1 (or None: one call per batch of coalitions)")
            self.game = game
            self.batch_size = None if batch_size is None else int(batch_size)
            self.device = _game_device(game)
            self.n_evaluations = 0
            n = int(n_players)
            own = getattr(game, "n_players", None)
            if own is not None and int(own) != n:
                raise ValueError(f"the game has {own} players, not {n}")
            empty = None
            if normalize:
                empty = float(self._evaluate(np.zeros((1, n), dtype=bool))[0])
            super().__init__(n_players=n, normalize=normalize, normalization_value=empty, player_names=player_names,
                             verbose=verbose)

        def _evaluate(self, coalitions: np.ndarray) -> np.ndarray:
            masks = torch.from_numpy(np.ascontiguousarray(coalitions, dtype=bool))
            if self.device is not None:
                masks = masks.to(self.device)
            k = masks.shape[0]
            if k == 0:
                return np.zeros(0, dtype=np.float64)
            step = k if self.batch_size is None else self.batch_size
            out = []
            for s in range(0, k, step):
                v = torch.as_tensor(self.game(masks[s : s + step])).detach()
                out.append(v.to("cpu", torch.float64).reshape(-1))
            values = torch.cat(out).numpy()
            if values.shape[0] != k:
                raise ValueError(f"the game returned {values.shape[0]} values for {k} coalitions")
            self.n_evaluations += k
            return values

        def value_function(self, coalitions: np.ndarray) -> np.ndarray:
            """v(S) of each row of the bool coalition matrix ``[k, n]``, by the wrapped game."""
            return self._evaluate(coalitions)

    ShapiqGame.__module__ = __name__
    ShapiqGame.__qualname__ = "ShapiqGame"
    return ShapiqGame


_SHAPIQ_GAME_CLASS = None


def __getattr__(name: str):
    # ShapiqGame subclasses shapiq.Game, so it is built on first use (shapiq stays optional)
    if name == "ShapiqGame":
        return _shapiq_game_class()
    raise AttributeError(name)


def _shapiq_game_class():
    global _SHAPIQ_GAME_CLASS
    if _SHAPIQ_GAME_CLASS is None:
        _SHAPIQ_GAME_CLASS = _make_shapiq_game_class()
    return _SHAPIQ_GAME_CLASS


def to_shapiq_game(
    game: Callable[[torch.Tensor], torch.Tensor],
    n_players: Optional[int] = None,
    *,
    normalize: bool = False,
    batch_size: Optional[int] = None,
    player_names: Optional[Sequence[str]] = None,
    verbose: bool = False,
):
    """A :class:`shapiq.Game` around ``game`` (bool masks ``[k, n]`` -> values ``[k]``).

    ``n_players``: the number of players (default: ``game.n_players``).  Each call of the shapiq
    game passes its whole coalition matrix to ``game`` in one call (``batch_size``: at most that many
    rows per call); masks are built on ``game.device`` when the game has one (the image game, whose
    forward passes run on the model's device and dtype, batched by its own ``batch_size``); values
    come back as float64 numpy.  ``normalize``: False (default) keeps the values equal to
    ``game(masks)``; True makes shapiq centre the game (v(empty) = 0), see the module docstring.
    ``player_names``: optional names (e.g. ``"cell(r,c)"``) for shapiq's plots and lookups.
    A game that came from :func:`from_shapiq_game` is unwrapped when no option changes it.
    """
    if isinstance(game, MogaGame) and not normalize and batch_size is None and player_names is None:
        inner = game.shapiq_game
        if getattr(inner, "normalization_value", 0.0) == 0.0 and (n_players is None or n_players == game.n_players):
            return inner
    n = n_players if n_players is not None else getattr(game, "n_players", None)
    if n is None:
        raise ValueError("pass n_players for a game without an n_players attribute")
    cls = _shapiq_game_class()
    return cls(game, int(n), normalize=normalize, batch_size=batch_size,
               player_names=None if player_names is None else list(player_names), verbose=verbose)


def from_shapiq_game(game: Any, n_players: Optional[int] = None, *, batch_size: Optional[int] = None):
    """One of our games around a shapiq game (any :class:`shapiq.Game`, or a callable taking a bool
    numpy coalition matrix ``[k, n]`` with ``n_players`` given).

    The result takes bool masks ``[k, n]`` (any device) and returns float64 values ``[k]`` equal to
    ``game(masks.cpu().numpy())``: the shapiq game's own normalisation, if it has one, is kept (it
    shifts every value by the same constant, which no interaction sees).  ``batch_size``: at most
    that many coalitions per call (None: the whole batch at once).  A game that came from
    :func:`to_shapiq_game` without normalisation is unwrapped.
    """
    cls = _SHAPIQ_GAME_CLASS
    if cls is not None and isinstance(game, cls) and game.normalization_value == 0 and batch_size is None:
        if n_players is None or int(n_players) == game.n_players:
            return game.game
    return MogaGame(game, n_players=n_players, batch_size=batch_size)
