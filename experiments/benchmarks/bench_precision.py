"""J^(m) to one precision: game evaluations and wall time of the estimators, side by side.

For each model, dtype and image it runs

* (c) ``PrecisionTarget(TAU)`` (``--target-noise``: noise floor / mean |I^(m)| per order);
* (a) the reference protocol, ``FixedContexts(k_u, "independent")``, and (b) shared contexts,
  ``FixedContexts(k_u, "shared")``, both with the uniform number of contexts k_u that reaches the
  worst-order noise ratio that (c) reached: k_u = max over orders of
  (sqrt(2/pi) mean_p sigma_p / (w * mean |I|))^2, with the per-sample sigma_p and mean |I| of
  each order measured by (c) (an oracle: (a) is given the contexts it needs without a pilot);
* the public reference code (Westlake-AI/A2MIM ``analysis_tools/representation_bottleneck``,
  ``--reference-git-dir``: extracted into a scratch folder with ``git archive``, never copied
  here) driven on the same model, image, label, pairs and k_u: its mask-building and forward code
  (``m_order_interaction_logit_pixel.compute_order_interaction_img``) and its second differences
  (``compute_interactions.compute_order_interaction_img``), with in-memory stand-ins for its file
  handlers and its own uniform context sampling (all 13 ratios, orders 0 and n-2 sampled too).

All runs of one image use the same model object, game settings and batch size; the methods run
one after another per repetition (interleaved over ``--reps``), times are medians.  The table gives
evaluations, seconds, the worst-order noise ratio reached, the ratios against (a), and the
evaluations scaled to equal worst-order precision (evaluations * (worst / w)^2; the noise floor
falls as 1/sqrt(contexts)).

    python experiments/benchmarks/bench_precision.py --reference-git-dir /path/to/A2MIM/.git
    python experiments/benchmarks/bench_precision.py --quick          # < 1 min, the test's smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from moga_analysis.interactions import noise_floor

#: per model: (grid, images source)
MODELS = {"tf_efficientnet_lite0.pypi": 14, "moganet_xtiny.fmnist_64": 8}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), help="models (grid: 14 for ImageNet, 8 for FMNIST)")
    p.add_argument("--grid", type=int, nargs="*", default=None, help="grid per model (default: 14 / 8)")
    p.add_argument("--images", type=int, default=1, help="images per model")
    p.add_argument("--pairs", type=int, default=24)
    p.add_argument("--target-noise", type=float, default=0.25)
    p.add_argument("--min-contexts", type=int, default=8)
    p.add_argument("--max-contexts", type=int, default=4096)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--memory-format", default="contiguous", choices=["contiguous", "channels_last", "auto"])
    p.add_argument("--batch-size", type=int, default=128, help="masked images per forward pass (all methods)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=1, help="interleaved repetitions of every method (medians)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-git-dir", default=None, help="git dir of Westlake-AI/A2MIM (the search tool's fetch)")
    p.add_argument("--reference-orders", type=int, default=None,
                   help="run the reference code on this many of its 13 ratios (evenly spaced) and scale its time "
                        "to all 13 (default: all)")
    p.add_argument("--ratios", type=float, nargs="+", default=None,
                   help="order ratios of our estimators (default: the 13 reference ratios; the reference code "
                        "always runs its own 13)")
    p.add_argument("--no-uniform", action="store_true",
                   help="do not run (a) and (b): count their evaluations for k_u (no times)")
    p.add_argument("--quick", action="store_true", help="tiny settings (< 1 min): FMNIST model, grid 4, 4 pairs")
    return p


# ----------------------------------------------------------------------------------- the reference code
class _Memory:
    """In-memory stand-in for the reference code's file handlers (load / save by ratio and name)."""

    def __init__(self, data=None):
        self.data = dict(data or {})

    def save(self, ratio, name, data):
        self.data[(ratio, name)] = data

    def load(self, ratio, name):
        return self.data[(ratio, name)]


def load_reference(git_dir: str, scratch: Path):
    """The reference modules from ``git archive`` of ``git_dir`` into ``scratch`` (or a reason why not)."""
    try:
        archive = subprocess.run(["git", "--git-dir", git_dir, "archive", "HEAD", "analysis_tools"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        return None, f"git archive of {git_dir} failed: {err}"
    root = scratch / "analysis_tools" / "representation_bottleneck"
    script = root / "m_order_interaction_logit_pixel.py"
    if not script.exists():
        return None, f"{root} has no m_order_interaction_logit_pixel.py"
    # its per-order timing line mixes str.format and %: `"Finish time: {:.4f}" % t` raises TypeError
    # after the forward passes and before the logits are saved, so unpatched it never finishes an
    # order; the scratch copy gets that one format string fixed (nothing else is changed)
    text = script.read_text()
    bug = '"Finish time: {:.4f}" %'
    patched = bug in text
    if patched:
        script.write_text(text.replace(bug, '"Finish time: %.4f" %'))
    sys.path.insert(0, str(root))
    stub = None
    try:
        import mmcv.runner  # noqa: F401
    except ImportError:
        # util/model_util.py imports mmcv.runner.load_state_dict to load its own checkpoints; the
        # benchmark passes the model in, so a stand-in that is never called is enough
        stub = types.ModuleType("mmcv")
        runner = types.ModuleType("mmcv.runner")

        def load_state_dict(*a, **k):
            raise RuntimeError("mmcv stand-in: the benchmark loads models itself")

        runner.load_state_dict = load_state_dict
        stub.runner = runner
        sys.modules["mmcv"], sys.modules["mmcv.runner"] = stub, runner
    try:
        import compute_interactions as ref_values
        import m_order_interaction_logit_pixel as ref_logits
    except Exception as err:  # pragma: no cover - depends on the fetched code
        return None, f"importing the reference code failed: {type(err).__name__}: {err}"
    notes = []
    if patched:
        notes.append("its `\"Finish time: {:.4f}\" % t` TypeError fixed in the scratch copy (unpatched, "
                     "every order raises before its logits are saved)")
    if stub:
        notes.append("mmcv not installed: a stand-in for mmcv.runner.load_state_dict (never called)")
    notes.append("its files replaced by in-memory handlers; its progress printing silenced")
    return (ref_logits, ref_values), "; ".join(notes)


def run_reference(ref, model, image, label, pairs, grid, k, ratios, batch_images, seed):
    """The reference protocol through the reference code: second differences [orders][P, k] and seconds."""
    import numpy as np

    ref_logits, ref_values = ref
    n = grid * grid
    P = len(pairs)
    dev = next(model.parameters()).device
    args = argparse.Namespace(samples_number_of_s=k, grid_size=grid, device=dev, pairs_number=P,
                              cal_batch=max(1, batch_images // 4), class_number=None, softmax_type="modified",
                              out_type="gt")
    ref_logits.MAX_BS = int(batch_images)  # its cap on images per forward pass (module constant, 1600)
    rng = np.random.default_rng(seed)
    pairs_np = pairs.numpy()
    out, secs = [], 0.0
    for ratio in ratios:
        m = int((n - 2) * ratio)
        players = []
        for i, j in pairs_np.tolist():
            context = [p for p in range(n) if p not in (i, j)]
            players.append([rng.choice(context, m, replace=False) for _ in range(k)])
        player_io = _Memory({(round(ratio * 100), "img"): np.array(players, dtype=np.int64).reshape(P, k, m)})
        logit_io, value_io = _Memory(), _Memory()
        t0 = time.perf_counter()
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            ref_logits.compute_order_interaction_img(args, model, image[None].to(dev), "img", pairs_np, ratio,
                                                     player_io, logit_io)
            logits = logit_io.load(round(ratio * 100), "img")
            args.class_number = logits.shape[1]
            ref_values.compute_order_interaction_img(args, "img", torch.tensor([label], device=dev), ratio,
                                                     logit_io, value_io)
        secs += time.perf_counter() - t0
        out.append(torch.as_tensor(value_io.load(round(ratio * 100), "img"), dtype=torch.float64))
    return out, secs


# ----------------------------------------------------------------------------------------------- helpers
def worst_ratio(res) -> float:
    return float(res.noise_ratio().max())


def uniform_need(res, w: float) -> int:
    """Contexts per pair that a uniform estimator needs for worst-order noise ratio ``w``."""
    counts = res.samples_per_pair if res.samples_per_pair is not None else res.n_samples[:, None].expand_as(res.values)
    if "effective_samples" in res.metadata:  # weighted pilot rounds: the unweighted-equivalent count
        counts = torch.tensor(res.metadata["effective_samples"], dtype=torch.float64)
    sigma = res.stderr * counts.double().sqrt()
    inner = res.stderr.sum(1) > 0
    need = (noise_floor(sigma) / (w * res.mean_abs())) ** 2
    return max(2, int(math.ceil(float(need[inner].max()))))


def ratio_of_samples(deltas):
    """Worst noise ratio of the reference code's second differences (one [P, k] tensor per order)."""
    out = 0.0
    for d in deltas:
        if d.shape[1] < 2:
            continue
        se = d.std(1) / math.sqrt(d.shape[1])
        floor, signal = float(noise_floor(se)), float(d.mean(1).abs().mean())
        if floor > 0:
            out = max(out, floor / signal)
    return out


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv=None):
    args = build_parser().parse_args(argv)
    import moga_analysis  # noqa: F401
    from moga_analysis.data import load_images, sample_image_paths
    from moga_analysis.interactions import (
        REFERENCE_RATIOS,
        FixedContexts,
        ImageMaskingGame,
        PrecisionTarget,
        orders_from_ratios,
        reference_pairs,
    )
    from moga_analysis.models.loading import load_model
    from moga_analysis.runtime import environment_info, prepare_model, tune_malloc

    if args.quick:
        args.models, args.grid, args.pairs, args.images = ["moganet_xtiny.fmnist_64"], [4], 3, 1
        args.target_noise, args.min_contexts, args.max_contexts, args.batch_size = 0.8, 4, 12, 64
        args.ratios, args.reference_orders = [0.0, 0.3, 0.6, 1.0], args.reference_orders or 2
        args.dtypes = ["float32"]
    torch.set_num_threads(args.threads)
    tune_malloc()
    grids = args.grid or [MODELS.get(m, 14) for m in args.models]
    scratch = tempfile.TemporaryDirectory(prefix="bench_precision_")
    ref, ref_note = (None, "not run: pass --reference-git-dir (the search tool's fetch of github:Westlake-AI/A2MIM)")
    if args.reference_git_dir:
        ref, ref_note = load_reference(args.reference_git_dir, Path(scratch.name))
    rows = []
    for model_name, grid in zip(args.models, grids):
        base = load_model(model_name, device="cpu")
        cfg = getattr(base, "pretrained_cfg", None) or {}
        if str(cfg.get("tag") or "").startswith("fmnist"):
            from moga_analysis.training import load_fmnist_samples

            imgs, labels = load_fmnist_samples()
            picks = torch.linspace(0, len(imgs) - 1, max(args.images, 2)).long().tolist()[: args.images]
            items = [(imgs[i], int(labels[i])) for i in picks]
        else:
            paths = sample_image_paths()[: args.images]
            imgs, _, _ = load_images(paths, base)
            items = [(imgs[i], None) for i in range(len(imgs))]
        n = grid * grid
        orders = orders_from_ratios(args.ratios or REFERENCE_RATIOS, n)
        for dtype in args.dtypes:
            model = prepare_model(load_model(model_name, device="cpu"), dtype=dtype, memory_format=args.memory_format)
            cl = args.memory_format != "contiguous" and any(
                p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                for p in model.parameters())
            for x, (image, label) in enumerate(items):
                game_kw = dict(grid=grid, batch_size=args.batch_size, channels_last=cl)
                target = ImageMaskingGame(model, image, target=label, **game_kw).target
                pairs = reference_pairs(grid, args.pairs, generator=torch.Generator().manual_seed(args.seed + x))
                seed = args.seed + 1 + x
                times = {k: [] for k in ("a", "b", "c", "ref")}
                res = {}
                k_u = None
                for rep in range(args.reps):
                    t0 = time.perf_counter()
                    est = PrecisionTarget(args.target_noise, min_contexts=args.min_contexts,
                                          max_contexts=args.max_contexts)
                    res["c"] = est.estimate(ImageMaskingGame(model, image, target=target, **game_kw), n, pairs,
                                            orders, seed=seed)
                    times["c"].append(time.perf_counter() - t0)
                    _note(f"(c) precision target: {res['c'].n_evaluations} evaluations, {times['c'][-1]:.1f} s, worst "
                          f"{worst_ratio(res['c']):.3f}, contexts {res['c'].metadata['contexts_per_order']}")
                    if k_u is None:
                        k_u = uniform_need(res["c"], worst_ratio(res["c"]))
                    if args.no_uniform and rep == 0:  # counted with a game that costs nothing, not run
                        zero = lambda masks: torch.zeros(masks.shape[0], dtype=torch.float64)
                        for key, method in (("a", "independent"), ("b", "shared")):
                            res[key] = FixedContexts(k_u, method).estimate(zero, n, pairs, orders, seed=seed)
                            times[key].append(float("nan"))
                    if not args.no_uniform:
                        for key, method in (("a", "independent"), ("b", "shared")):
                            t0 = time.perf_counter()
                            res[key] = FixedContexts(k_u, method).estimate(
                                ImageMaskingGame(model, image, target=target, **game_kw), n, pairs, orders, seed=seed)
                            times[key].append(time.perf_counter() - t0)
                            _note(f"({key}) {method} x {k_u}: {res[key].n_evaluations} evaluations, "
                                  f"{times[key][-1]:.1f} s, worst {worst_ratio(res[key]):.3f}")
                    if ref is not None:
                        ratios = list(REFERENCE_RATIOS)
                        if args.reference_orders and args.reference_orders < len(ratios):
                            # evenly spaced inner ratios (the end orders have a single context)
                            idx = torch.linspace(1, len(ratios) - 2, args.reference_orders).round().long().tolist()
                            ratios = [ratios[i] for i in sorted(set(idx))]
                        try:
                            deltas, secs = run_reference(ref, model, image, target, pairs, grid, k_u, ratios,
                                                         args.batch_size, seed)
                            times["ref"].append(secs * len(REFERENCE_RATIOS) / len(ratios))
                            res["ref"] = (deltas, len(ratios))
                        except Exception as err:
                            res["ref"] = None
                            failure = f"failed on {dtype}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
                            if failure not in ref_note:
                                ref_note += "; " + failure
                tag = f"{model_name}, {dtype}, image {x}, grid {grid}, {args.pairs} pairs, target {args.target_noise}"
                w = worst_ratio(res["c"])
                ref_a = None
                for key, label_ in (("a", "(a) reference protocol: independent, uniform"),
                                    ("b", "(b) shared, uniform"), ("c", "(c) precision target, shared"),
                                    ("ref", "public reference code (A2MIM)")):
                    if key not in res or res[key] is None or not times[key]:
                        continue
                    if key == "ref":
                        deltas, n_run = res[key]
                        evals = 4 * args.pairs * k_u * len(REFERENCE_RATIOS)
                        worst = ratio_of_samples(deltas)
                        ctx = f"{k_u} (x 13 ratios{', ' + str(n_run) + ' run, time scaled' if n_run < 13 else ''})"
                    else:
                        r = res[key]
                        evals, worst = r.n_evaluations, worst_ratio(r)
                        if args.no_uniform and key in ("a", "b"):
                            worst = w  # not run: k_u is the need at w, by construction
                            label_ += " [counted, not run]"
                        ctx = (f"{k_u}" if key != "c" else
                               f"{min(r.metadata['contexts_per_order'][1:-1]):.0f}-"
                               f"{max(r.metadata['contexts_per_order'][1:-1]):.0f}")
                    sec = statistics.median(times[key])
                    if key == "a":
                        ref_a = (evals, sec, worst)
                    rows.append(dict(tag=tag, method=label_, contexts=ctx, evals=evals, secs=sec, worst=worst,
                                     scaled=evals * (worst / w) ** 2 if w > 0 else float("nan"), ref_a=ref_a,
                                     missed=(res["c"].metadata["missed_orders"] if key == "c" else None)))
    _print(rows, args, ref_note, environment_info)
    scratch.cleanup()
    return rows


def _print(rows, args, ref_note, environment_info):
    env = environment_info()
    print(f"torch {env.get('torch')}, {env.get('device', 'cpu')}, {args.threads} threads, batch {args.batch_size}, "
          f"memory format {args.memory_format}, reps {args.reps} (medians)")
    print()
    print("| run | method | contexts / pair | evaluations | seconds | worst noise ratio | evaluations at equal worst "
          "| (a) / this: evaluations | (a) / this: seconds | (a) / this: at equal worst |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        a = r["ref_a"]
        ea = f"{a[0] / r['evals']:.2f}" if a else ""
        ta = f"{a[1] / r['secs']:.2f}" if a else ""
        sa = f"{a[0] * (a[2] / r['worst']) ** 2 / r['evals']:.2f}" if a and r["worst"] > 0 else ""
        print(f"| {r['tag']} | {r['method']} | {r['contexts']} | {r['evals']:,} | {r['secs']:.1f} | {r['worst']:.3f} "
              f"| {r['scaled']:,.0f} | {ea} | {ta} | {sa} |")
    print()
    missed = [(r["tag"], r["missed"]) for r in rows if r["missed"]]
    for tag, m in missed:
        print(f"the precision target was missed at orders {m} ({tag})")
    print(f"reference code: {ref_note}")


if __name__ == "__main__":
    main()
