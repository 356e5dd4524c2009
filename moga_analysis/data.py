"""Images, folders, labels and preprocessing.

Preprocessing always comes from the model's pretrained cfg through timm (``resolve_data_config``
and ``create_transform``); ImageNet-1k class names come from ``timm.data.ImageNetInfo``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

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
    "choose_subset",
    "iter_batches",
    "ImageSet",
    "image_set",
    "IMAGE_SOURCES",
    "imagenet_samples",
]

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".JPEG")

#: ImageNet-1k labels of the shipped photos where one is clearly right (None: no true class)
SAMPLE_LABELS = {"chelsea": 285, "coffee": 967, "rocket": None, "astronaut": None}

#: image sources every tool knows by name (``--images NAME``, ``image_set(NAME)``)
IMAGE_SOURCES = ("imagenet-samples",)
#: the ground truth of the ILSVRC2012 validation images shipped in shapiq (a fact table; its header
#: names the public copies of the validation labels each entry was cross-checked against)
SHAPIQ_VAL_LABELS = ASSETS / "imagenet" / "shapiq_val_labels.tsv"


class SamplesNotInstalled(RuntimeError):
    """The optional package that holds a named image source is not installed."""


def _shapiq_examples_dir() -> Path:
    """The folder of ILSVRC2012 validation images in the installed ``shapiq_games`` package
    (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("shapiq_games")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        folder = Path(root) / "benchmark" / "imagenet_examples"
        if folder.is_dir():
            return folder
    raise SamplesNotInstalled(
        "the imagenet-samples are the ILSVRC2012 validation images that ship with shapiq, which is not "
        "installed here (or holds no shapiq_games/benchmark/imagenet_examples): pip install moga_analysis[samples]"
    )


def imagenet_samples() -> Tuple[List[Path], List[int]]:
    """``(paths, labels)``: the ILSVRC2012 validation images shipped in the installed shapiq package
    (``shapiq_games/benchmark/imagenet_examples``, read from there) with their ground-truth classes
    as timm's ImageNet-1k indices (sorted-synset order), sorted by file name.

    The classes come from the fact table ``assets/imagenet/shapiq_val_labels.tsv`` (every entry
    cross-checked against independent public copies of the validation labels, named in its
    header); an image found in the package but not in the table is left out with a warning, never
    guessed.  Without shapiq: :class:`SamplesNotInstalled` (``pip install moga_analysis[samples]``).
    """
    folder = _shapiq_examples_dir()
    table = {}
    for line in SHAPIQ_VAL_LABELS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _synset, index, _sources = line.split("\t")
            table[name] = int(index)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith("ILSVRC2012_val_"))
    unknown = [p.name for p in files if p.name not in table]
    if unknown:
        log.warning("imagenet-samples: no cross-checked label for %d image(s), left out: %s", len(unknown), unknown)
    kept = [p for p in files if p.name in table]
    if not kept:
        raise SamplesNotInstalled(
            f"no labelled ILSVRC2012 validation images in {folder}: pip install moga_analysis[samples]"
        )
    return kept, [table[p.name] for p in kept]


def _named_source(name: str) -> Tuple[List[Path], List[int]]:
    """``(paths, labels)`` of a named image source, or an error naming the known sources."""
    if name == "imagenet-samples":
        return imagenet_samples()
    raise FileNotFoundError(
        f"{name!r} is neither an image folder nor a named image source (known: {', '.join(IMAGE_SOURCES)})"
    )


def _is_source_name(images: Any) -> bool:
    """A string that names an image source: a known name, or a bare word that is no existing path."""
    if not isinstance(images, str):
        return False
    if images in IMAGE_SOURCES:
        return True
    return not Path(images).exists() and os.sep not in images and "/" not in images and not Path(images).suffix


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


def choose_subset(n_total: int, num_images: Optional[int], seed: int = 0) -> List[int]:
    """The one subset rule of every tool: ``num_images`` of ``n_total`` items.

    All items when ``num_images`` is None or at least ``n_total``; else a seeded random subset
    (``torch.randperm`` with a generator seeded by ``seed``), in increasing order.  Random, so that
    50 images of an ImageNet folder sorted by synset are not 50 tenches; seeded, so that every tool
    and every rerun picks the same images.
    """
    if num_images is not None and int(num_images) < 1:
        raise ValueError(f"the number of images must be >= 1, got {num_images}")
    if num_images is None or int(num_images) >= n_total:
        return list(range(n_total))
    pick = torch.randperm(n_total, generator=torch.Generator().manual_seed(int(seed)))[: int(num_images)]
    return sorted(pick.tolist())


def iter_batches(
    images: Union[torch.Tensor, Iterable[Any]], batch_size: Optional[int] = None
) -> Iterator[torch.Tensor]:
    """Image batches from a tensor ``[N, C, H, W]`` (or one image ``[C, H, W]``), split by
    ``batch_size`` (None: one batch), or from an iterable of batches or ``(images, ...)`` tuples
    (a DataLoader), each split again when ``batch_size`` is given."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
        bs = int(batch_size or images.shape[0]) or 1
        for s in range(0, images.shape[0], bs):
            yield images[s : s + bs]
        return
    for item in images:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"image batches must be tensors or (images, ...) tuples, got {type(x).__name__}")
        if batch_size:
            yield from iter_batches(x, batch_size)
        else:
            yield x


class ImageSet:
    """The images of an analysis, whatever the caller gave: files or preprocessed tensors.

    ``names``: one string per image (its path, or ``tensor[i]``); ``labels``: class per image, -1
    for none (the analyses then explain the predicted class).  :meth:`load` gives image ``i``
    preprocessed by ``transform`` (files) or as given (tensors), None for an unreadable file.
    """

    def __init__(
        self,
        names: Sequence[str],
        labels: Sequence[int],
        tensors: Optional[torch.Tensor] = None,
        indices: Optional[Sequence[int]] = None,
    ):
        if len(names) != len(labels):
            raise ValueError(f"{len(labels)} labels for {len(names)} images")
        self.names = [str(n) for n in names]
        self.labels = [int(x) for x in labels]
        self.tensors = tensors
        #: each image's position in the full collection it was chosen from (stable across subsets)
        self.indices = list(range(len(self.names))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def from_files(self) -> bool:
        return self.tensors is None

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        """Images ``indices`` of this set (their ``indices`` still refer to the full collection)."""
        t = None if self.tensors is None else self.tensors[list(indices)]
        return ImageSet([self.names[i] for i in indices], [self.labels[i] for i in indices], t,
                        [self.indices[i] for i in indices])

    def load(self, i: int, transform: Optional[Callable] = None) -> Optional[torch.Tensor]:
        if self.tensors is not None:
            return self.tensors[i]
        if transform is None:
            raise ValueError("file images need a transform (the model's preprocessing)")
        try:
            return transform(_open_rgb(Path(self.names[i])))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            log.warning("skipping unreadable image %s: %s", self.names[i], err)
            return None

    def load_all(self, transform: Optional[Callable] = None) -> Tuple[torch.Tensor, List[int]]:
        """``(batch [B, C, H, W], kept indices)``: every readable image (an error when none is)."""
        kept, out = [], []
        for i in range(len(self)):
            x = self.load(i, transform)
            if x is not None:
                kept.append(i)
                out.append(x)
        if not out:
            raise ValueError(f"none of the {len(self)} images could be read, e.g. {self.names[:3]}")
        return torch.stack(out), kept


def image_set(
    images: Any = None,
    labels: Optional[Sequence[int]] = None,
    *,
    labels_file: Optional[Union[str, os.PathLike]] = None,
    labels_format: str = "auto",
    num_images: Optional[int] = None,
    seed: int = 0,
    require_labels: bool = False,
) -> ImageSet:
    """An :class:`ImageSet` from what a user passes, with the one subset rule (:func:`choose_subset`).

    ``images``: None (the photos shipped with the package, with their ImageNet labels where one is
    clearly right), the name of an image source (:data:`IMAGE_SOURCES`: ``"imagenet-samples"``, the
    ILSVRC2012 validation images in the installed shapiq package with their ground truth,
    :func:`imagenet_samples`), a folder (ImageNet synset folders, or a flat folder with ``labels_file``, else
    unlabelled; ``labels_format``: how ``labels_file`` is read, see :func:`moga_analysis.labels.read_labels`),
    a list of image files, a preprocessed tensor ``[N, C, H, W]``, a dataset with
    ``files`` and ``labels`` (:class:`LabeledImageFolder`) or an :class:`ImageSet`.  ``labels``: one
    class per image (-1 or None: the predicted class), overriding those found.  ``require_labels``: an error when no
    image has a label (an ImageNet validation folder without its labels).
    """
    tensors, indices = None, None
    if labels_format != "auto" and labels_file is None:
        raise ValueError(f"labels format {labels_format!r} given without a labels file (--labels FILE)")
    if isinstance(images, ImageSet):
        if labels is None and num_images is None:
            return images
        names, found, tensors, indices = images.names, images.labels, images.tensors, images.indices
    elif images is None:
        paths = sample_image_paths()
        names = [str(p) for p in paths]
        found = [-1 if SAMPLE_LABELS.get(p.stem) is None else int(SAMPLE_LABELS[p.stem]) for p in paths]
    elif _is_source_name(images):
        if labels_file is not None:
            raise ValueError(f"the image source {images!r} comes with its labels; drop the labels file")
        paths, found = _named_source(images)
        names = [str(p) for p in paths]
    elif isinstance(images, torch.Tensor):
        tensors = images if images.dim() == 4 else images[None]
        names = [f"tensor[{i}]" for i in range(tensors.shape[0])]
        found = [-1] * len(names)
    elif isinstance(images, (str, os.PathLike)):
        ds = LabeledImageFolder(images, transform=lambda x: x, labels_file=labels_file, labels_format=labels_format)
        names, found = [str(p) for p in ds.files], list(ds.labels)
    elif hasattr(images, "files") and hasattr(images, "labels"):
        names, found = [str(p) for p in images.files], list(images.labels)
    else:
        names = [str(p) for p in images]
        found = [-1] * len(names)
    if labels is not None:
        labels = [-1 if lb is None else int(lb) for lb in labels]
        if len(labels) != len(names):
            raise ValueError(f"{len(labels)} labels given for {len(names)} images")
        found = labels
    if require_labels and all(lb < 0 for lb in found):
        raise ValueError(f"no labels found for the images in {images}: use synset sub-folders or pass a labels file")
    return ImageSet(names, found, tensors, indices).subset(choose_subset(len(names), num_images, seed))


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
        from .fmnist import load_fmnist_samples

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
    """Images with class labels, in one of three layouts.

    * ImageNet synset folders: ``root/n01440764/*.JPEG`` -> label from timm's ImageNet info.
    * Any folder plus ``labels_file``: read by :func:`moga_analysis.labels.read_labels` in exactly one
      convention (``NAME LABEL`` lines, Kaggle's ``LOC_val_solution.csv``, the ILSVRC2012 devkit
      ground truth, one synset or index per line), detected from the content or forced with
      ``labels_format``; a file it cannot read unambiguously is an error, never a guess.
    * Any other folder: label -1 (label-free metrics only).

    Items are ``(image tensor, label)``.  ``files`` and ``labels`` are public.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        transform: Callable,
        labels_file: Optional[Union[str, os.PathLike]] = None,
        labels_format: str = "auto",
        num_classes: int = 1000,
    ):
        from .labels import folder_labels, read_labels

        self.root = Path(root)
        self.transform = transform
        self.files = list_images(self.root)
        if labels_file is not None:
            self.labels = read_labels(labels_file, self.files, labels_format=labels_format, num_classes=num_classes)
        else:
            self.labels = folder_labels(self.files) or [-1] * len(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(_open_rgb(self.files[i])), self.labels[i]


