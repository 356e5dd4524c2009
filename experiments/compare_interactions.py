"""Tables from saved interaction results: J^(m) per model, and each model against a reference in
absolute strength per band of orders (paired over images, bootstrap intervals).

    python experiments/compare_interactions.py runs/figures/interactions_fmnist_twins \
        --reference moganet_xtiny.fmnist_64 --out experiments/results/fmnist/interactions_fmnist_twins/tables.md

Reads the ``interactions_<model>.safetensors`` files of a run folder through
``moga_analysis.interactions.InteractionStack``; computes nothing but statistics of them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    from moga_analysis.interactions import ORDER_BANDS, InteractionStack

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="folder with interactions_<model>.safetensors files")
    p.add_argument("--reference", default=None, help="model the others are compared with (default: the first)")
    p.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    args = p.parse_args(argv)

    try:
        stack = InteractionStack.load(args.results)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    names = stack.models
    ref = args.reference or names[0]
    if ref not in stack:
        raise SystemExit(f"--reference {ref!r} is not among {names}")
    r0 = stack[ref]
    n, orders, s = r0.n_players, r0.orders, r0.settings
    # results saved before the estimator objects name contexts and method at the top level
    est = s.get("estimator") or {"contexts": s.get("contexts"), "sharing": s.get("method")}
    how = (f"{est['contexts']} contexts ({est['sharing']})" if "contexts" in est
           else f"a precision target {est['target_noise']}")
    lines = [
        f"Settings: {r0.values.shape[0]} images, grid {s['grid']} (n = {n}), {s['pairs']} pairs, {how}, "
        f"baseline {s['baseline']}, {s['output']}, seed {s['seed']}.",
        "",
        "J^(m) (normalised over the evaluated orders), columns m/(n-2):",
        "",
        "| model | " + " | ".join(f"{float(o) / (n - 2):.2f}" for o in orders) + " |",
        "|---|" + "---|" * len(orders),
    ]
    for name, J in stack.relative_strength().items():
        lines.append(f"| {name} | " + " | ".join(f"{j:.2f}" for j in J.tolist()) + " |")
    lines += ["", "Mean |I^(m)| and, in brackets, the noise floor sqrt(2/pi) * mean stderr; columns m:", "",
              "| model | " + " | ".join(str(int(o)) for o in orders) + " |", "|---|" + "---|" * len(orders)]
    for name in names:
        means, floors = stack[name].mean_abs().mean(0).tolist(), stack[name].noise_floor().mean(0).tolist()
        lines.append(f"| {name} | " + " | ".join(f"{a:.3f} ({f:.3f})" for a, f in zip(means, floors)) + " |")
    bands = " / ".join(f"{k} {lo}-{hi}" for k, (lo, hi) in ORDER_BANDS.items())
    lines += ["", f"Against {ref}: difference in mean |I^(m)| per band of m/(n-2) ({bands}), paired over "
              "images, 95 % bootstrap interval, relative to the reference:", "",
              "| model | " + " | ".join(ORDER_BANDS) + " |", "|---|" + "---|" * len(ORDER_BANDS)]
    for name in names:
        if name == ref:
            continue
        cells = [f"{r['diff']:+.4f} [{r['lower']:+.4f}, {r['upper']:+.4f}] ({r['relative']:+.0%})"
                 for r in stack.band_difference(ref, name).values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = f"python experiments/compare_interactions.py {args.results} --reference {ref}"
        args.out.write_text(f"Made by `{command}`.\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
