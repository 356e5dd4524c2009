"""Fashion-MNIST: the data of the models trained and shipped by this project.

* :func:`load_fashion_mnist`: the full train/test split from a local torchvision-layout folder;
* :func:`load_fmnist_samples`: the 300 test images shipped in the package (first 30 per class);
* :func:`preprocess`: 28 x 28 uint8 -> the shipped models' input (bilinear to 64 x 64, normalised);
* :func:`write_fmnist_folder`: the shipped images as PNG files plus ``labels.txt``, for the CLIs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "FMNIST_CLASSES",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "FMNIST_SAMPLES",
    "IMAGE_SIZE",
    "load_fashion_mnist",
    "load_fmnist_samples",
    "preprocess",
    "write_fmnist_folder",
]

#: class names in label order (the dataset's own names)
FMNIST_CLASSES: Tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
#: per-pixel mean and std of the 60,000 training images scaled to [0, 1] (at 28 x 28)
FMNIST_MEAN: float = 0.2860
FMNIST_STD: float = 0.3530
IMAGE_SIZE: int = 64
#: the shipped 300 test images (30 per class, MIT licence): see :func:`load_fmnist_samples`
FMNIST_SAMPLES = Path(__file__).resolve().parent / "assets" / "fmnist" / "fmnist_test_300.safetensors"


def load_fashion_mnist(
    root: Union[str, os.PathLike] = "data", train: bool = True, download: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of the train or test split.

    ``root`` holds ``FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.
    """
    from torchvision.datasets import FashionMNIST

    try:
        ds = FashionMNIST(str(root), train=train, download=download)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"Fashion-MNIST not found under {Path(root) / 'FashionMNIST' / 'raw'} ({err}). Offline: "
            "`apt-get install dataset-fashion-mnist` and gunzip /usr/share/datasets/fashion-mnist/*.gz "
            "into that folder; online: pass download=True (--download)."
        ) from err
    return ds.data.clone(), ds.targets.clone().long()


def load_fmnist_samples(
    size: Optional[int] = IMAGE_SIZE, channels: int = 3, normalize: bool = True
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The 300 Fashion-MNIST test images shipped in the package (first 30 of each class).

    Returns ``(images, labels)``: by default ``float32 [300, 3, 64, 64]`` preprocessed exactly as
    the shipped models expect (see :func:`preprocess`); ``size=None`` gives the raw
    ``uint8 [300, 28, 28]``; ``normalize=False`` gives [0, 1] pixels.  Class names: :data:`FMNIST_CLASSES`.
    """
    from safetensors.torch import load_file

    t = load_file(str(FMNIST_SAMPLES))
    images, labels = t["images"], t["labels"].long()
    if size is None:
        return images, labels
    if normalize:
        return preprocess(images, size, channels), labels
    return preprocess(images, size, channels, mean=0.0, std=1.0), labels


def preprocess(
    images: torch.Tensor,
    size: int = IMAGE_SIZE,
    channels: int = 3,
    mean: float = FMNIST_MEAN,
    std: float = FMNIST_STD,
) -> torch.Tensor:
    """``uint8 [N, 28, 28]`` (or ``[N, 1, 28, 28]``) -> normalised ``float32 [N, channels, size, size]``."""
    x = images.float().div_(255.0)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - mean) / std
    if channels != 1:
        x = x.expand(-1, channels, -1, -1).contiguous()
    return x


def write_fmnist_folder(folder: Path, n: Optional[int] = None) -> Path:
    """Write the shipped Fashion-MNIST test images as 64 x 64 PNG files plus ``labels.txt``.

    The images are upsampled exactly as the shipped models were trained (bilinear, 28 -> 64), so the
    command-line tools' timm preprocessing (resize to 64, crop 1.0) leaves them unchanged.
    """
    from PIL import Image

    images, labels = load_fmnist_samples(normalize=False)
    if n is not None:
        images, labels = images[:n], labels[:n]
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("fmnist_*.png"):  # a folder left by a run with other settings
        stale.unlink()
    pixels = images[:, 0].mul(255).round().clamp(0, 255).to(torch.uint8)
    lines = []
    for i, (img, lab) in enumerate(zip(pixels, labels)):
        name = f"fmnist_{i:04d}.png"
        Image.fromarray(img.numpy(), mode="L").save(folder / name)
        lines.append(f"{name} {int(lab)}")
    (folder / "labels.txt").write_text("\n".join(lines) + "\n")
    return folder
