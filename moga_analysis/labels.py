"""Labels you can trust: class labels of a folder of images, read in exactly one convention.

A labels file is read in one of the formats below.  ``labels_format="auto"`` (the default) detects
the format from the file's content, and where the content alone cannot tell two conventions apart
it refuses to guess; any other value forces that format.

==============  ==========================================================================================
format          what the file (or folder) holds
==============  ==========================================================================================
``folders``     no file: ImageNet synset folders, ``root/n01440764/*.JPEG`` (timm's sorted-synset index)
``pairs``       lines ``NAME LABEL``; ``LABEL`` a synset (``n01440764``) or a 0-based class index;
                ``NAME`` is matched with each image's file name, else with its stem
``kaggle``      Kaggle's ``LOC_val_solution.csv``: header ``ImageId,PredictionString``, rows
                ``ILSVRC2012_val_00008726,n02119789 255 142 454 329 ...``; the first token of the
                prediction string is the image's synset; ``ImageId`` is matched with the file stem
``devkit``      the ILSVRC2012 devkit's ``ILSVRC2012_validation_ground_truth.txt``: one 1-based devkit
                class ID per line, line *k* for ``ILSVRC2012_val_{k:08d}``.  Devkit IDs follow the
                devkit's own class order (ID 1 is ``n02119789`` kit fox), not timm's sorted order:
                each ID is mapped to its synset through the devkit's table (shipped in
                ``assets/imagenet/ilsvrc2012_devkit_synsets.txt``, its source named in its header),
                then to timm's index (``ILSVRC2012_val_00000001``: ID 490 -> ``n01751748`` -> 65)
``synsets``     one synset per line, in sorted-file-name order
``indices``     one 0-based class index per line, in sorted-file-name order
==============  ==========================================================================================

**The bare-integer rule.** A file of one integer per line is either ``devkit`` (1-based, devkit
order) or ``indices`` (0-based, sorted order), and the numbers alone cannot tell which: both hold
values in 1..999 and a wrong guess scores every image against the wrong class.  Auto-detection
therefore recognises the devkit file *by its name* (``ILSVRC2012_validation_ground_truth*``) and
treats every other bare-integer file as an error that asks for ``labels_format="indices"`` or
``"devkit"`` (``--labels-format`` on the command line).

Devkit lines are matched with images by the number in ``ILSVRC2012_val_NNNNNNNN`` when every image
is named that way (so a subset of the validation set works); otherwise the file must have exactly
one line per image, in sorted-file-name order.  A file that matches none of the formats, a label out
of range (``0 <= index < num_classes``, devkit IDs in 1..1000), an unknown synset, an image without
a label or two different labels for one image is a :class:`LabelsError` (a ``ValueError``), never a
guess.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

__all__ = [
    "LABEL_FORMATS",
    "LabelsError",
    "DEVKIT_TABLE",
    "devkit_synsets",
    "synset_to_index",
    "detect_format",
    "folder_labels",
    "read_labels",
]

LABEL_FORMATS = ("auto", "pairs", "kaggle", "devkit", "synsets", "indices")

#: the ILSVRC2012 devkit's ID -> synset table (a data file; its header names the source)
DEVKIT_TABLE = Path(__file__).resolve().parent / "assets" / "imagenet" / "ilsvrc2012_devkit_synsets.txt"

_SYNSET = re.compile(r"^n\d{8}$")
_INT = re.compile(r"^[+-]?\d+$")
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})$")
_DEVKIT_NAME = re.compile(r"^ILSVRC2012_validation_ground_truth", re.IGNORECASE)


class LabelsError(ValueError):
    """A labels file that cannot be read in exactly one convention."""


@functools.lru_cache(maxsize=1)
def synset_to_index() -> Dict[str, int]:
    """``{"n01440764": 0, ...}``: timm's ImageNet-1k index of each of the 1000 synsets (sorted order)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return {info.index_to_label_name(i): i for i in range(info.num_classes())}


@functools.lru_cache(maxsize=1)
def devkit_synsets() -> tuple:
    """The synset of each ILSVRC2012 devkit class ID: element ``k - 1`` is the synset of ID ``k``."""
    table: Dict[int, str] = {}
    for n, line in enumerate(DEVKIT_TABLE.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ident, synset = line.split()
        table[int(ident)] = synset
    if sorted(table) != list(range(1, 1001)):
        raise RuntimeError(f"{DEVKIT_TABLE} does not hold devkit IDs 1..1000")
    return tuple(table[k] for k in range(1, 1001))


def folder_labels(files: Sequence[Union[str, os.PathLike]]) -> Optional[List[int]]:
    """Labels from ImageNet synset folders (``.../n01440764/x.JPEG``), or None if any image is elsewhere."""
    synsets = synset_to_index()
    parents = [Path(f).parent.name for f in files]
    if files and all(p in synsets for p in parents):
        return [synsets[p] for p in parents]
    return None


def _lines(path: Path) -> List[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise LabelsError(f"labels file {path} is not a text file ({err})") from err
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def detect_format(path: Union[str, os.PathLike]) -> str:
    """The format of a labels file (one of :data:`LABEL_FORMATS` but ``auto``), or a :class:`LabelsError`."""
    path = Path(path)
    lines = _lines(path)
    if not lines:
        raise LabelsError(f"labels file {path} is empty")
    header = [c.strip().lower() for c in lines[0].split(",")]
    if header[:2] == ["imageid", "predictionstring"]:
        return "kaggle"
    tokens = [ln.split() for ln in lines]
    if all(len(t) == 2 for t in tokens):
        return "pairs"
    if all(len(t) == 1 for t in tokens):
        if all(_SYNSET.match(t[0]) for t in tokens):
            return "synsets"
        if all(_INT.match(t[0]) for t in tokens):
            if _DEVKIT_NAME.match(path.name):
                return "devkit"
            raise LabelsError(
                f"labels file {path} holds one integer per line: that is either 0-based class indices in "
                f"sorted-file-name order or the ILSVRC2012 devkit's 1-based class IDs (devkit order), and the "
                f"numbers cannot tell which; say which with labels_format='indices' or 'devkit' "
                f"(--labels-format indices|devkit)"
            )
    bad = next(i for i, t in enumerate(tokens) if len(t) != len(tokens[0]) or len(t) > 2) if tokens else 0
    raise LabelsError(
        f"labels file {path} matches none of the formats (NAME LABEL lines, one label per line, Kaggle's "
        f"ImageId,PredictionString CSV, the devkit ground truth): line {bad + 1} is {lines[bad][:80]!r}"
    )


def _parse_label(tok: str, where: str, num_classes: int) -> int:
    synsets = synset_to_index()
    if _SYNSET.match(tok):
        if tok not in synsets:
            raise LabelsError(f"{where}: {tok} is not one of the 1000 ImageNet-1k synsets")
        index = synsets[tok]
    elif _INT.match(tok):
        index = int(tok)
    else:
        raise LabelsError(f"{where}: label {tok!r} is neither a synset (n01440764) nor a class index")
    if not 0 <= index < num_classes:
        raise LabelsError(f"{where}: class index {index} is out of range 0..{num_classes - 1}")
    return index


def _match_names(table: Dict[str, int], files: Sequence[Path], path: Path) -> List[int]:
    out, missing = [], []
    for f in files:
        if f.name in table:
            out.append(table[f.name])
        elif f.stem in table:
            out.append(table[f.stem])
        else:
            missing.append(f.name)
    if missing:
        raise LabelsError(f"{path} has no label for {len(missing)} of {len(files)} images, e.g. {missing[:3]}")
    return out


def _add(table: Dict[str, int], name: str, label: int, where: str) -> None:
    if table.get(name, label) != label:
        raise LabelsError(f"{where}: {name} is labelled twice, as {table[name]} and {label}")
    table[name] = label


def _in_file_order(labels: List[int], files: Sequence[Path], path: Path) -> List[int]:
    if len(labels) != len(files):
        raise LabelsError(
            f"{path} has {len(labels)} labels for {len(files)} images; a one-label-per-line file needs exactly "
            f"one line per image, in sorted-file-name order"
        )
    return labels


def _kaggle_labels(path: Path, lines: List[str], files: Sequence[Path], num_classes: int) -> List[int]:
    if [c.strip().lower() for c in lines[0].split(",")][:2] != ["imageid", "predictionstring"]:
        raise LabelsError(f"{path} is not Kaggle's LOC_val_solution.csv (no ImageId,PredictionString header)")
    table: Dict[str, int] = {}
    for n, line in enumerate(lines[1:], 2):
        image_id, sep, prediction = line.partition(",")
        if not sep or not prediction.split():
            raise LabelsError(f"{path}:{n}: expected ImageId,PredictionString, got {line[:80]!r}")
        synset = prediction.split()[0]
        if not _SYNSET.match(synset):
            raise LabelsError(f"{path}:{n}: the prediction string starts with {synset!r}, not a synset")
        _add(table, image_id.strip(), _parse_label(synset, f"{path}:{n}", num_classes), f"{path}:{n}")
    return _match_names(table, files, path)


def _pairs_labels(path: Path, lines: List[str], files: Sequence[Path], num_classes: int) -> List[int]:
    table: Dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        tokens = line.split()
        if len(tokens) != 2:
            raise LabelsError(f"{path}:{n}: expected 'NAME LABEL', got {line[:80]!r}")
        _add(table, Path(tokens[0]).name, _parse_label(tokens[1], f"{path}:{n}", num_classes), f"{path}:{n}")
    return _match_names(table, files, path)


def _devkit_labels(path: Path, ints: List[int], files: Sequence[Path], num_classes: int) -> List[int]:
    """1-based devkit class IDs -> synset -> timm index, matched by validation-image number when
    every image is named ``ILSVRC2012_val_NNNNNNNN``, else in sorted-file-name order."""
    out_of_range = [(n, v) for n, v in enumerate(ints, 1) if not 1 <= v <= 1000]
    if out_of_range:
        n, v = out_of_range[0]
        raise LabelsError(f"{path}:{n}: devkit class ID {v} is out of range 1..1000")
    table_synsets = devkit_synsets()
    synsets = synset_to_index()
    indices = [synsets[table_synsets[v - 1]] for v in ints]
    if num_classes != 1000:
        raise LabelsError(f"devkit labels are ImageNet-1k classes; the model has {num_classes}")
    numbers = [_VAL_NAME.match(f.stem) for f in files]
    if files and all(numbers):
        out = []
        for f, m in zip(files, numbers):
            k = int(m.group(1))
            if not 1 <= k <= len(indices):
                raise LabelsError(f"{path} has {len(indices)} lines, none for {f.name}")
            out.append(indices[k - 1])
        return out
    return _in_file_order(indices, files, path)


def _one_per_line_labels(path: Path, fmt: str, lines: List[str], files: Sequence[Path], num_classes: int) -> List[int]:
    """The ``synsets``, ``indices`` and ``devkit`` formats: one label per line."""
    tokens = [ln.split() for ln in lines]
    if any(len(t) != 1 for t in tokens):
        n = next(i for i, t in enumerate(tokens) if len(t) != 1)
        raise LabelsError(f"{path}:{n + 1}: a {fmt} file holds one label per line, got {lines[n][:80]!r}")
    values = [t[0] for t in tokens]
    if fmt == "synsets":
        bad = [v for v in values if not _SYNSET.match(v)]
        if bad:
            raise LabelsError(f"{path}: {bad[0]!r} is not a synset (format 'synsets')")
        return _in_file_order([_parse_label(v, f"{path}:{n}", num_classes) for n, v in enumerate(values, 1)],
                              files, path)
    bad = [v for v in values if not _INT.match(v)]
    if bad:
        raise LabelsError(f"{path}: {bad[0]!r} is not an integer (format {fmt!r})")
    if fmt == "indices":
        return _in_file_order([_parse_label(v, f"{path}:{n}", num_classes) for n, v in enumerate(values, 1)],
                              files, path)
    return _devkit_labels(path, [int(v) for v in values], files, num_classes)


def read_labels(
    path: Union[str, os.PathLike],
    files: Sequence[Union[str, os.PathLike]],
    labels_format: str = "auto",
    num_classes: int = 1000,
) -> List[int]:
    """The class index of each of ``files`` (sorted image paths) read from the labels file ``path``.

    ``labels_format``: ``auto`` (detect, see the module docstring) or one of ``pairs``, ``kaggle``,
    ``devkit``, ``synsets``, ``indices``.  Synsets map to timm's ImageNet-1k indices; integer
    labels must lie in ``0..num_classes-1``.  Raises :class:`LabelsError` rather than guess.
    """
    path = Path(path)
    files = [Path(f) for f in files]
    if labels_format not in LABEL_FORMATS:
        raise LabelsError(f"unknown labels format {labels_format!r}; choose one of {', '.join(LABEL_FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    fmt = detect_format(path) if labels_format == "auto" else labels_format
    lines = _lines(path)
    if fmt == "kaggle":
        return _kaggle_labels(path, lines, files, num_classes)
    if fmt == "pairs":
        return _pairs_labels(path, lines, files, num_classes)
    return _one_per_line_labels(path, fmt, lines, files, num_classes)
