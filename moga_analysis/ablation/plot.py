"""Figures of ablation sweeps: pure functions ``metrics -> (fig, ax)``; pyplot only inside them."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

from ..plotting.style import styled

__all__ = ["plot_accuracy_drop", "ablation_matrix", "plot_interaction_curves"]

_LABELS = {
    "top1_drop": "top-1 drop (points)",
    "disagreement": "disagreement with full model (%)",
    "kl": "KL(full ‖ ablated) (nats)",
    "top1": "top-1 accuracy (%)",
}


def _value(m: Mapping[str, Any], metric: str) -> Optional[float]:
    if metric == "disagreement":
        a = m.get("agreement")
        return None if a is None else 100.0 - a
    return m.get(metric)


def ablation_matrix(
    metrics: Mapping[str, Mapping[str, Any]], metric: str = "top1_drop"
) -> Tuple[list, list, list]:
    """``(groups, stage choices, values[group][stage])`` from a runner's ``metrics`` dict.

    Groups are ``kind`` (``kind [mean]`` for mean mode), in first-seen order; missing cells are None.
    """
    groups: list = []
    stages: list = []
    cells = {}
    for m in metrics.values():
        if m.get("kind") in (None, "none"):
            continue
        g = m["kind"] if m.get("mode", "zero") == "zero" else f"{m['kind']} [{m['mode']}]"
        s = str(m["stages"])
        if g not in groups:
            groups.append(g)
        if s not in stages:
            stages.append(s)
        cells[g, s] = _value(m, metric)
    order = sorted(stages, key=lambda s: (s != "all", s))
    return groups, order, [[cells.get((g, s)) for s in order] for g in groups]


@styled
def plot_accuracy_drop(
    metrics: Mapping[str, Mapping[str, Any]],
    metric: Optional[str] = None,
    ax=None,
    stage_labels: Optional[Sequence[str]] = None,
):
    """Grouped bars: one group per ablation, one bar per stage choice.

    ``metric``: ``top1_drop`` (default when labels exist), ``disagreement`` (default without
    labels), ``kl`` or ``top1``.  Returns ``(fig, ax)``.
    """
    import matplotlib.pyplot as plt

    from ..plotting.style import PALETTE

    if metric is None:
        has_labels = any(m.get("top1_drop") is not None for m in metrics.values() if m.get("kind") != "none")
        metric = "top1_drop" if has_labels else "disagreement"
    if metric not in _LABELS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(_LABELS)}")
    groups, stages, values = ablation_matrix(metrics, metric)
    if not groups:
        raise ValueError("no ablation rows to plot")
    if all(v is None for row in values for v in row):
        raise ValueError(f"no values for {metric!r} (unlabeled images have no accuracy; try 'disagreement')")
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(3.2, 0.55 * len(groups) * max(1, len(stages)) ** 0.5 + 1.5), 2.2))
    else:
        fig = ax.figure
    width = 0.8 / max(1, len(stages))
    labels = list(stage_labels) if stage_labels is not None else [
        "all stages" if s == "all" else f"stage {s}" for s in stages
    ]
    for j, s in enumerate(stages):
        xs = [i + (j - (len(stages) - 1) / 2) * width for i in range(len(groups))]
        ys = [float("nan") if v is None else v for v in (row[j] for row in values)]
        ax.bar(xs, ys, width=width * 0.95, color=PALETTE[j % len(PALETTE)], label=labels[j])
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=0)
    ax.set_ylabel(_LABELS[metric])
    ax.axhline(0.0, color="0.3", linewidth=0.5)
    if len(stages) > 1:
        ax.legend(ncol=min(len(stages), 5), loc="upper left", bbox_to_anchor=(0, 1.18))
    return fig, ax


@styled
def plot_interaction_curves(curves: Mapping[str, Mapping[str, Any]], ax=None, full: str = "none"):
    """J^(m) against m/(n-2) of each ablated model over the full model's (``full``, drawn in black).

    ``curves``: ``{spec name: {"ratios": [...], "J": [...]}}`` as the runner stores them.
    """
    import matplotlib.pyplot as plt

    from ..plotting.style import PALETTE

    if not curves:
        raise ValueError("no interaction curves to plot")
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.4, 2.3))
    else:
        fig = ax.figure
    k = 0
    for name, c in curves.items():
        if name == full:
            ax.plot(c["ratios"], c["J"], color="black", linewidth=1.6, marker="o", label="full model", zorder=3)
        else:
            ax.plot(c["ratios"], c["J"], color=PALETTE[k % (len(PALETTE) - 1)], marker=".", label=name)
            k += 1
    ax.set_xlabel("interaction order m / (n - 2)")
    ax.set_ylabel("relative strength $J^{(m)}$")
    ax.legend(fontsize=6, ncol=2)
    return fig, ax
