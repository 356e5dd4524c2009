"""``python -m moga_analysis.interactions``: J^(m) curves of timm classifiers from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..results import load_tensors, save_tensors
from ..runtime import progress as _progress
from .design import REFERENCE_RATIOS, orders_from_ratios, reference_pairs
from .estimators import estimate_interactions
from .strength import relative_strength

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# command-line tool
# ----------------------------------------------------------------------------------------------
PROTOCOLS = {
    # the public reference code's protocol, reproduced exactly
    "reference": dict(
        method="independent",
        grid=14,
        pairs=50,
        contexts=50,
        ratios=REFERENCE_RATIOS,
        baseline="mean",
        output="log_odds",
    ),
    # same pairs, orders and budget per pair; contexts shared between pairs (fewer evaluations)
    "efficient": dict(
        method="shared", grid=14, pairs=50, contexts=50, ratios=REFERENCE_RATIOS, baseline="mean", output="log_odds"
    ),
}


def build_parser() -> argparse.ArgumentParser:
    from ..cli import add_common_args, add_image_args, add_model_args

    p = argparse.ArgumentParser(
        prog="python -m moga_analysis.interactions",
        description="Multi-order interactions I^(m)(i,j) and J^(m) curves of timm classifiers (MogaNet included).",
        allow_abbrev=False,
    )
    add_model_args(p)
    add_image_args(p)
    g = p.add_argument_group("interactions")
    g.add_argument(
        "--imagenet-val",
        default=None,
        metavar="DIR",
        help="ImageNet validation folder (synset sub-folders, or flat with --labels)",
    )
    g.add_argument("--labels", default=None, help="labels file: 'filename label' lines or one label per line")
    g.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="reference",
        help="reference: independent contexts per pair (the public code); efficient: shared contexts",
    )
    g.add_argument(
        "--method", choices=["shared", "independent"], default=None, help="override the protocol's estimator"
    )
    g.add_argument("--grid", type=int, default=None, help="players = grid x grid cells (default 14)")
    g.add_argument("--pairs", type=int, default=None, help="pairs per image (default 50)")
    g.add_argument("--contexts", type=int, default=None, help="contexts per pair and order (default 50)")
    g.add_argument("--ratios", type=float, nargs="+", default=None, help="order ratios r, m = int((n-2) r)")
    g.add_argument("--baseline", default=None, choices=["mean", "zero", "blur"], help="absent-player baseline")
    g.add_argument(
        "--value",
        dest="output",
        default=None,
        choices=["log_odds", "logit", "log_prob"],
        help="game value v(S) of the target class (default log_odds)",
    )
    g.add_argument("--image-size", type=int, default=None, help="square input size (default: the model's)")
    g.add_argument("--dtype", default="float32", help="model dtype: float32 (default), bfloat16, float16")
    g.add_argument("--channels-last", action="store_true", help="channels-last forward passes")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on long GPU runs)")
    g.add_argument("--resume", action="store_true", help="keep finished per-image results in --out and do the rest")
    g.add_argument(
        "--normalization",
        choices=["evaluated", "all"],
        default="evaluated",
        help="J^(m) divides by the mean over the evaluated orders (reference) or over all orders",
    )
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the figure's bands")
    g.add_argument("--no-figure", action="store_true")
    add_common_args(p)
    return p


def _settings(args) -> Dict[str, Any]:
    s = dict(PROTOCOLS[args.protocol])
    for key in ("method", "grid", "pairs", "contexts", "ratios", "baseline", "output"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    s["ratios"] = [float(r) for r in s["ratios"]]
    s["protocol"] = args.protocol
    s["seed"] = int(args.seed)
    s["dtype"] = str(args.dtype)
    s["image_size"] = args.image_size
    if s["pairs"] < 1 or s["contexts"] < 2:
        raise ValueError("--pairs must be >= 1 and --contexts >= 2")
    return s


def _image_list(args) -> Tuple[List[Path], List[int]]:
    """(paths, labels) of the selected images; label -1 = none (the predicted class is used)."""
    from ..data import SAMPLE_LABELS, LabeledImageFolder, list_images, sample_image_paths

    if args.imagenet_val and args.images:
        raise ValueError("give --images or --imagenet-val, not both")
    root = args.imagenet_val or args.images
    if root is None:
        paths = sample_image_paths()
        labels = [-1 if SAMPLE_LABELS.get(p.stem) is None else int(SAMPLE_LABELS[p.stem]) for p in paths]
    else:
        list_images(root)  # clear errors for a missing or empty folder
        ds = LabeledImageFolder(root, transform=lambda x: x, labels_file=args.labels)
        paths, labels = list(ds.files), [int(x) for x in ds.labels]
        if args.imagenet_val and all(lb < 0 for lb in labels):
            raise ValueError(f"no ImageNet labels found for {root}: use synset sub-folders or pass --labels")
    if args.num_images is not None:
        if args.num_images < 1:
            raise ValueError("--num-images must be >= 1")
        if args.imagenet_val and args.num_images < len(paths):
            pick = torch.randperm(len(paths), generator=torch.Generator().manual_seed(int(args.seed)))[
                : args.num_images
            ]
            pick = sorted(pick.tolist())
            paths, labels = [paths[i] for i in pick], [labels[i] for i in pick]
        else:
            paths, labels = paths[: args.num_images], labels[: args.num_images]
    return paths, labels


def _load_one(path: Path, transform) -> Optional[torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return transform(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        log.warning("skipping unreadable image %s: %s", path, err)
        return None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _image_seed(seed: int, idx: int) -> int:
    return (int(seed) * 1_000_003 + int(idx)) % (2**62)


def run_model(
    name: str,
    args,
    settings: Dict[str, Any],
    paths: List[Path],
    labels: List[int],
    out: Path,
    rank: int = 0,
    world: int = 1,
    checkpoint: Optional[str] = None,
) -> None:
    """Compute and save the per-image results of one model (this rank's share of the images)."""
    from ..data import load_model, transform_for
    from .games import ImageMaskingGame
    from ..runtime import resolve_dtype

    device = _rank_device(args.device, world)
    # random weights (if any) are drawn from a generator seeded with --seed: reruns, resumed runs and
    # every rank of a distributed run see the same network
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(args.seed))
        model = load_model(
            name, checkpoint=checkpoint, device=device, pretrained=False if args.random_weights else None
        )
    model = model.to(resolve_dtype(args.dtype))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    transform = transform_for(model, size=args.image_size)
    if args.compile:
        model = torch.compile(model)
    grid = int(settings["grid"])
    n = grid * grid
    orders = orders_from_ratios(settings["ratios"], n)
    folder = out / _safe(name)
    folder.mkdir(parents=True, exist_ok=True)
    mine = [i for i in range(len(paths)) if i % world == rank]
    batch = args.batch_size or (64 if torch.device(device).type == "cpu" else 256)
    bar = _progress(mine, enabled=not args.no_progress, desc=f"{name} images", unit="img")
    for idx in bar:
        file = folder / f"img_{idx:05d}.safetensors"
        config = dict(settings, model=name, image=str(paths[idx]), index=idx)
        if checkpoint is not None:
            config["checkpoint"] = str(checkpoint)
        if args.resume and file.exists():
            _, meta = load_tensors(file)
            old = meta.get("metadata", {}).get("config")
            if old != json_roundtrip(config):
                raise ValueError(f"{file} was made with other settings; use a new --out or drop --resume")
            log.debug("resume: %s done", file)
            continue
        image = _load_one(paths[idx], transform)
        if image is None:
            _write_skip(file, config, "unreadable image")
            continue
        target = labels[idx] if labels[idx] >= 0 else None
        game = ImageMaskingGame(
            model,
            image,
            target=target,
            grid=grid,
            baseline=settings["baseline"],
            output=settings["output"],
            batch_size=batch,
            channels_last=args.channels_last,
        )
        pairs = reference_pairs(
            grid, int(settings["pairs"]), generator=torch.Generator().manual_seed(_image_seed(args.seed, idx))
        )
        try:
            res = estimate_interactions(
                game,
                n,
                pairs,
                orders,
                int(settings["contexts"]),
                method=settings["method"],
                seed=_image_seed(args.seed, idx) + 1,
                progress=not args.no_progress,
            )
        except ValueError as err:
            raise ValueError(f"{name} on image {paths[idx]}: {err}") from None
        meta = dict(
            config=json_roundtrip(config),
            target=game.target,
            label=labels[idx],
            weights=getattr(model, "weights_source", None),
        )
        dataclasses.replace(res, metadata=meta).save(file)
        log.debug("%s: %s done (%d evaluations)", name, paths[idx].name, res.n_evaluations)


def json_roundtrip(obj):
    import json

    return json.loads(json.dumps(obj, default=str))


def _write_skip(file: Path, config: Dict[str, Any], reason: str) -> None:
    save_tensors(file, {"skipped": torch.zeros(1)}, {"skipped": reason, "metadata": {"config": json_roundtrip(config)}})


def _rank_device(device: str, world: int):
    from ..runtime import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 second differences: no TF32
        torch.backends.cudnn.allow_tf32 = False
        torch.cuda.set_device(dev)
    return dev


def collect(
    name: str, settings: Dict[str, Any], paths: List[Path], out: Path, extra_meta: Dict[str, Any]
) -> Dict[str, Any]:
    """Stack the per-image files of one model into ``out/interactions_<model>.safetensors``."""
    from ..runtime import environment_info

    folder = out / _safe(name)
    vals, errs, halves, pairs, targets, kept, skipped, evals = [], [], [], [], [], [], [], 0
    orders, weights = None, None
    for idx, path in enumerate(paths):
        tensors, meta = load_tensors(folder / f"img_{idx:05d}.safetensors")
        if "skipped" in meta:
            skipped.append([str(path), meta["skipped"]])
            continue
        vals.append(tensors["values"])
        errs.append(tensors["stderr"])
        halves.append(tensors["half_values"])
        pairs.append(tensors["pairs"])
        orders = tensors["orders"]
        targets.append(int(meta["metadata"]["target"]))
        kept.append(str(path))
        evals += int(meta["n_evaluations"])
        weights = meta["metadata"].get("weights")
    if not vals:
        raise ValueError(f"{name}: no image could be read")
    values = torch.stack(vals)
    n = int(settings["grid"]) ** 2
    per_image = values.abs().mean(-1)
    H = torch.stack(halves)
    rms_unb = (H[:, 0] * H[:, 1]).mean(-1).clamp_min(0).sqrt()
    floor = math.sqrt(2 / math.pi) * torch.stack(errs).mean(-1)
    tensors = {
        "orders": orders,
        "values": values,
        "stderr": torch.stack(errs),
        "half_values": H,
        "pairs": torch.stack(pairs),
        "targets": torch.tensor(targets),
        "mean_abs": per_image,
        "noise_floor": floor,
        "rms_unbiased": rms_unb,
        "J_evaluated": relative_strength(values, orders, n, normalization="evaluated"),
        "J_all": relative_strength(values, orders, n, normalization="all")
        if int(orders[0]) == 0 and int(orders[-1]) == n - 2
        else relative_strength(values),
    }
    meta = dict(
        model=name,
        weights=weights,
        settings=settings,
        images=kept,
        skipped=skipped,
        n_evaluations=evals,
        environment=environment_info(),
        **extra_meta,
    )
    save_tensors(out / f"interactions_{_safe(name)}.safetensors", tensors, meta)
    return {"name": name, "orders": orders, "per_image": per_image, "n_players": n}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import model_specs, setup_from_args

    args = build_parser().parse_args(argv)
    setup_from_args(args)
    settings = _settings(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dist = None
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if _rank_device(args.device, world).type == "cuda" else "gloo"
        dist.init_process_group(backend)
    try:
        out = Path(args.out or "runs/interactions")
        paths, labels = _image_list(args)
        specs = model_specs(args)
        models = [name for name, _ in specs]
        log.info("%d images, models %s, settings %s (rank %d/%d)", len(paths), models, settings, rank, world)
        for name, checkpoint in specs:
            run_model(name, args, settings, paths, labels, out, rank, world, checkpoint=checkpoint)
        if dist is not None:
            dist.barrier()
        if rank == 0:
            curves = [collect(name, settings, paths, out, {"models": models}) for name in models]
            if not args.no_figure:
                from .plot import plot_relative_strength
                from ..plotting.style import save_figure

                fig = plot_relative_strength(
                    curves, normalization=args.normalization, n_boot=args.bootstrap, seed=args.seed
                )
                for f in save_figure(fig, out / "interactions_J"):
                    log.info("wrote %s", f)
            for c in curves:
                J = relative_strength(
                    c["per_image"][:, :, None], c["orders"], c["n_players"], normalization=args.normalization
                )
                log.info("%s J^(m): %s", c["name"], " ".join(f"{x:.3f}" for x in J.tolist()))
            log.info("results in %s", out)
        if dist is not None:
            dist.barrier()
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from ..cli import run_main

    run_main(main)
