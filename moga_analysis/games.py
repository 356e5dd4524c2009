"""Cooperative games (``moga_analysis.games`` is the public name; they live in
:mod:`moga_analysis.interactions.games`)."""

from .interactions.games import BASELINES, OUTPUTS, HarsanyiGame, ImageMaskingGame

__all__ = ["ImageMaskingGame", "HarsanyiGame", "OUTPUTS", "BASELINES"]
