"""Labels you can trust: each labels format read in its own convention, checked on known entries."""

import pytest
from PIL import Image

from moga_analysis import data, labels
from moga_analysis.labels import LabelsError, devkit_synsets, read_labels, synset_to_index

VAL = [f"ILSVRC2012_val_{k:08d}.JPEG" for k in (1, 2, 3)]


def _files(tmp_path, names):
    out = []
    for n in names:
        p = tmp_path / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
        out.append(p)
    return sorted(out)


def test_devkit_table_is_a_permutation_of_timms_synsets_with_the_known_entries():
    table = devkit_synsets()
    index = synset_to_index()
    assert len(table) == 1000 and sorted(table) == sorted(index) == list(index)  # timm's order is sorted
    assert table[1 - 1] == "n02119789"  # kit fox is devkit ID 1
    assert table[449 - 1] == "n01440764" and index["n01440764"] == 0  # tench: ID 449, sorted index 0
    assert table[490 - 1] == "n01751748" and index["n01751748"] == 65  # sea snake, ILSVRC2012_val_00000001
    assert table != sorted(table)  # the devkit's order is not timm's
    header = labels.DEVKIT_TABLE.read_text().splitlines()[:20]
    assert any("meta.mat" in ln for ln in header) and any("github.com/arthw/imagenet_label" in ln for ln in header)


def test_devkit_ground_truth_by_image_number(tmp_path):
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("490\n361\n171\n")
    files = _files(tmp_path / "val", VAL)
    assert labels.detect_format(gt) == "devkit"
    got = read_labels(gt, files)
    assert got[0] == 65  # n01751748, not 489 (a 0-based reading) and not 490
    idx = synset_to_index()
    assert got == [idx[devkit_synsets()[v - 1]] for v in (490, 361, 171)]
    # a subset of the validation set: lines are matched by the number in the file name
    assert read_labels(gt, [files[2]]) == [got[2]]
    with pytest.raises(LabelsError, match="none for"):
        read_labels(gt, _files(tmp_path / "v4", ["ILSVRC2012_val_00000009.JPEG"]))
    gt.write_text("490\n0\n171\n")
    with pytest.raises(LabelsError, match="out of range 1..1000"):
        read_labels(gt, files)


def test_bare_integers_are_never_guessed(tmp_path):
    files = _files(tmp_path / "flat", ["a.png", "b.png"])
    plain = tmp_path / "labels.txt"
    plain.write_text("3\n7\n")
    with pytest.raises(LabelsError, match="labels_format='indices' or 'devkit'"):
        read_labels(plain, files)
    assert read_labels(plain, files, labels_format="indices") == [3, 7]
    idx = synset_to_index()
    assert read_labels(plain, files, labels_format="devkit") == [idx[devkit_synsets()[2]], idx[devkit_synsets()[6]]]
    with pytest.raises(LabelsError, match="3 labels for 2 images"):
        plain.write_text("3\n7\n9\n")
        read_labels(plain, files, labels_format="indices")
    plain.write_text("3\n1000\n")
    with pytest.raises(LabelsError, match="out of range 0..999"):
        read_labels(plain, files, labels_format="indices")


def test_kaggle_solution_csv(tmp_path):
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n"
                   "ILSVRC2012_val_00000002,n02119789 255 142 454 329 n02119789 44 21 239 170\n"
                   "ILSVRC2012_val_00000001,n01751748 1 2 3 4\n"
                   "ILSVRC2012_val_00000003,n01440764 9 9 9 9\n")
    files = _files(tmp_path / "val", VAL)
    assert labels.detect_format(csv) == "kaggle"
    idx = synset_to_index()
    assert read_labels(csv, files) == [65, idx["n02119789"], 0]
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n99999999 1 2 3 4\n")
    with pytest.raises(LabelsError, match="not one of the 1000"):
        read_labels(csv, files[:1])


def test_pairs_synsets_and_bad_files(tmp_path):
    files = _files(tmp_path / "flat", ["a.png", "b.png"])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("b.png n01440764\na.png 5\n")
    assert read_labels(pairs, files) == [5, 0]
    pairs.write_text("a 5\nb 6\n")  # names without their extension match the stem
    assert read_labels(pairs, files) == [5, 6]
    pairs.write_text("a.png 5\nb.png 12\n")
    assert read_labels(pairs, files) == [5, 12]
    with pytest.raises(LabelsError, match="out of range 0..9"):
        read_labels(pairs, files, num_classes=10)
    pairs.write_text("a.png 5\na.png 6\nb.png 1\n")
    with pytest.raises(LabelsError, match="labelled twice"):
        read_labels(pairs, files)
    pairs.write_text("a.png 5\n")
    with pytest.raises(LabelsError, match="no label for 1 of 2"):
        read_labels(pairs, files)
    syn = tmp_path / "synsets.txt"
    syn.write_text("n01751748\nn01440764\n")
    assert labels.detect_format(syn) == "synsets" and read_labels(syn, files) == [65, 0]
    junk = tmp_path / "junk.txt"
    junk.write_text("a.png 5 extra words\nb.png 3\n")
    with pytest.raises(LabelsError, match="matches none of the formats"):
        read_labels(junk, files)
    junk.write_text("a.png cat\nb.png dog\n")
    with pytest.raises(LabelsError, match="neither a synset"):
        read_labels(junk, files)
    with pytest.raises(LabelsError, match="unknown labels format"):
        read_labels(pairs, files, labels_format="guess")


def test_labeled_image_folder_delegates_to_labels(tmp_path):
    for syn in ["n01440764", "n01751748"]:
        (tmp_path / "syn" / syn).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "syn" / syn / "x.png")
    assert data.LabeledImageFolder(tmp_path / "syn", transform=lambda im: im).labels == [0, 65]
    flat = tmp_path / "val"
    flat.mkdir()
    for n in VAL[:2]:
        Image.new("RGB", (8, 8)).save(flat / n)
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("490\n449\n")
    ds = data.LabeledImageFolder(flat, transform=lambda im: im, labels_file=gt)
    assert ds.labels == [65, 0]
    other = tmp_path / "gt.txt"
    other.write_text("490\n449\n")
    with pytest.raises(ValueError, match="indices"):
        data.LabeledImageFolder(flat, transform=lambda im: im, labels_file=other)
    assert data.LabeledImageFolder(flat, lambda im: im, labels_file=other, labels_format="devkit").labels == [65, 0]
    assert data.LabeledImageFolder(flat, lambda im: im, labels_file=other, labels_format="indices").labels == [490, 449]


@pytest.mark.filterwarnings("ignore::moga_analysis.erf.RandomWeightsWarning")
def test_labels_format_through_the_command_line(tmp_path):
    import json

    import numpy as np

    from moga_analysis import ablation, cli, erf

    flat = tmp_path / "flat"
    flat.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(flat / name)
    plain = tmp_path / "labels.txt"
    plain.write_text("0\n3\n")  # bare 0-based indices: never guessed
    common = ["--model", "moganet_xtiny", "--random-weights", "--image-size", "32", "--images", str(flat),
              "--labels", str(plain), "--device", "cpu", "--no-figures", "--no-progress", "-q", "--no-tune-malloc"]

    parser = erf.build_parser()
    assert parser.parse_args(common).labels_format == "auto"
    with pytest.raises(LabelsError, match="--labels-format indices"):
        cli.images_from_args(parser.parse_args(common))
    assert cli.images_from_args(parser.parse_args([*common, "--labels-format", "indices"])).labels == [0, 3]
    with pytest.raises(SystemExit):  # argparse: not one of the formats
        parser.parse_args([*common, "--labels-format", "guess"])
    without_file = [a for a in common if a not in ("--labels", str(plain))]
    with pytest.raises(ValueError, match="without a labels file"):
        cli.images_from_args(parser.parse_args([*without_file, "--labels-format", "indices"]))

    with pytest.raises(LabelsError, match="labels_format='indices' or 'devkit'"):
        erf.main([*common, "--out", str(tmp_path / "erf_auto")])
    assert erf.main([*common, "--labels-format", "indices", "--out", str(tmp_path / "erf")]) == 0

    out = tmp_path / "ablation"
    sweep = ["--ablations", "gate", "--stages", "all", "--modes", "zero", "--workers", "0", "--out", str(out)]
    with pytest.raises(LabelsError):
        ablation.main([*common, *sweep])
    assert ablation.main([*common, *sweep, "--labels-format", "indices"]) == 0
    metrics = json.loads((out / "ablation_results.json").read_text())["metrics"]
    assert metrics["none"]["n_labeled"] == 2
