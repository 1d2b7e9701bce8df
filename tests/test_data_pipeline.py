"""Real-dataset training and evaluation end to end, the DataLoader path, the feature cache and bad input."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from data_trees import LAYOUTS, make_tree

from tgfr.cli import main
from tgfr.data import FaceCaptionDataset, build_synthetic_splits, sources, verification_pairs
from tgfr.data.dataset import FixedItems
from tgfr.evaluation.metrics import all_pair_scores, pair_scores
from tgfr.models.tgfr import ModelConfig, build_image_encoder
from tgfr.training import TrainingViews, load_config
from tgfr.training.data import FeatureViews, collate_batch, make_loader, synthetic_config
from tgfr.training.features import REGIONS_FILE, _write_entry, cached_features

FAST_EVAL = ["--levels", "normal", "very_bad", "--modes", "image", "tgfr", "--attention-examples", "1"]


def _cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error


@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_and_eval_on_a_real_layout(layout, tmp_path, capsys):
    root = tmp_path / "data"
    make_tree(layout, root)
    run = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--out", str(run), "--dataset", layout, "--data-root", str(root)]) == 0
    split = json.loads((run / "split.json").read_text())
    assert split["dataset"] == layout and split["num_train"] + split["num_test"] == 24
    train_ids = {name.split(".")[0] for name in split["train"]}
    assert not train_ids & {name.split(".")[0] for name in split["test"]}
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "report"), *FAST_EVAL]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    # every pair of held-out photos scored, and the counts in the report
    first, details = report["results"][0], report["metadata"]
    assert first["num_genuine_pairs"] + first["num_impostor_pairs"] == split["num_test"] * (split["num_test"] - 1) // 2
    assert (details["genuine_pairs"], details["impostor_pairs"]) == (first["num_genuine_pairs"],
                                                                     first["num_impostor_pairs"])
    assert details["test_photos"] == split["num_test"] and details["dataset"] == layout
    # eval of a moved tree reads the same held-out photos
    moved = tmp_path / "moved"
    root.rename(moved)
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "again"), "--data-root", str(moved),
                 "--dataset", layout, *FAST_EVAL]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["results"][0]["eer"] == first["eer"]
    assert "eval: error" in _cli_error(capsys, ["eval", "--checkpoint", str(run), "--out", str(tmp_path / "x"),
                                                "--dataset", "synthetic"])


def test_partial_tree_falls_back_to_a_seeded_identity_disjoint_split(tmp_path, caplog):
    make_tree("celeba-dialog", tmp_path, identities=6, photos=2)
    records = sources.read_dataset("celeba-dialog", tmp_path)
    split = sources.split_dataset("celeba-dialog", records, tmp_path, seed=3)
    assert split.notes and "not the official split" in split.notes[0]
    assert {r.identity for r in split.train}.isdisjoint({r.identity for r in split.test})
    assert len({r.identity for r in split.test}) >= 2 and split.train
    again = sources.split_dataset("celeba-dialog", records, tmp_path, seed=3)
    assert [r.name for r in again.test] == [r.name for r in split.test]


def test_release_split_lists_are_used_and_a_lonely_test_identity_is_named(tmp_path, monkeypatch, capsys):
    files = make_tree("mmcelebahq", tmp_path / "data", identities=4, photos=3)
    root = tmp_path / "data"
    # a complete "release" of this size, with its lists: identities 2 and 3 in test, one photo of 3 in train
    monkeypatch.setitem(sources.RELEASE_IMAGES, "mmcelebahq", 12)
    (root / "train.txt").write_text("\n".join(str(n) for n in range(6)) + "\n9\n")
    (root / "test.txt").write_text("\n".join(str(n) for n in (6, 7, 8, 10, 11)) + "\n")
    records = sources.read_dataset("mmcelebahq", root)
    split = sources.split_dataset("mmcelebahq", records, root, seed=0)
    assert sorted(r.name for r in split.test) == sorted(f"{n}.jpg" for n in (6, 7, 8, 10, 11))
    assert not split.notes
    (root / "test.txt").write_text("6\n7\n8\n9\n")  # identity 5003 has one test photo
    error = _cli_error(capsys, ["train", "--preset", "smoke", "--out", str(tmp_path / "run"), "--dataset",
                                "mmcelebahq", "--data-root", str(root)])
    assert "identity 5003 has one test image" in error and str(files["images"][9]) in error


def _bad_trees():
    def missing_root(root, files):
        return root / "nowhere", "nowhere"

    def missing_caption_dir(root, files):
        for path in files["captions"]:
            path.unlink()
        files["captions"][0].parent.rmdir()
        return root, "celeba-caption"

    def missing_identity_file(root, files):
        files["identities"][0].unlink()
        return root, "CelebA-HQ-identity.txt"

    def undecodable_image(root, files):
        files["images"][4].write_bytes(b"not a jpeg at all")
        return root, str(files["images"][4])

    def empty_caption(root, files):
        files["captions"][5].write_text("\n\n")
        return root, str(files["captions"][5])

    return [missing_root, missing_caption_dir, missing_identity_file, undecodable_image, empty_caption]


@pytest.mark.parametrize("spoil", _bad_trees(), ids=lambda f: f.__name__)
def test_bad_input_is_named_before_training(spoil, tmp_path, capsys):
    files = make_tree("mmcelebahq", tmp_path / "data", identities=5, photos=2)
    root, named = spoil(tmp_path / "data", files)
    run = tmp_path / "run"
    error = _cli_error(capsys, ["train", "--preset", "smoke", "--out", str(run), "--dataset", "mmcelebahq",
                                "--data-root", str(root)])
    assert "tgfr train: error:" in error and named in error
    assert not (run / "checkpoint.pt").exists()


@pytest.mark.parametrize("spoil", _bad_trees()[3:], ids=lambda f: f.__name__)
def test_skip_bad_skips_counts_and_lists(spoil, tmp_path):
    files = make_tree("mmcelebahq", tmp_path / "data", identities=5, photos=2)
    root, named = spoil(tmp_path / "data", files)
    skipped = []
    records = sources.read_dataset("mmcelebahq", root, skip_bad=True, skipped=skipped)
    assert len(records) == 9 and len(skipped) == 1 and named in skipped[0]


def test_config_values_are_type_checked(tmp_path, capsys):
    error = _cli_error(capsys, ["train", "--preset", "smoke", "--out", str(tmp_path), "align.epochs=abc"])
    assert "'align.epochs' must be int" in error
    config_file = tmp_path / "c.yaml"
    config_file.write_text("preset: smoke\ndataset: face2text\ndata_root: 3\n")
    assert "'data_root' must be str" in _cli_error(capsys, ["train", "--config", str(config_file), "--out",
                                                            str(tmp_path / "r")])
    config = load_config("smoke", ["align.lr=1", "model.image_weights=null"])
    assert config.align.lr == 1.0 and isinstance(config.align.lr, float)


def _synthetic_train(size=32):
    config = load_config("smoke")
    return build_synthetic_splits(synthetic_config(config.data, size, 0))["train"]


def test_loader_gives_the_in_memory_samples_on_the_synthetic_set():
    split = _synthetic_train()
    views = TrainingViews(split, ["normal", "mixed", "mixed"])
    batches = [list(range(k, min(k + 37, len(views)))) for k in range(0, len(views), 37)][::-1]
    seen = 0
    for batch in make_loader(views, batches, num_workers=1):
        for position, k in enumerate(batch["index"].tolist()):
            view, photo = divmod(k, len(split))
            rendered = split.with_quality(views.qualities[view])
            rendered.set_epoch(view)
            item = rendered[photo]
            assert torch.equal(batch["image"][position], item["image"])
            assert batch["label"][position] == item["identity"] and batch["captions"][position] == item["captions"]
            seen += 1
    assert seen == len(views) == 3 * len(split)
    # the two mixed views are different draws
    assert not torch.equal(views[len(split)]["image"], views[2 * len(split)]["image"])


def test_fixed_items_are_the_datasets_items_made_once():
    degraded = _synthetic_train().subset(range(12)).with_quality("very_bad")
    fixed = FixedItems(degraded)
    assert len(fixed) == 12 and fixed.quality == "very_bad" and np.array_equal(fixed.labels, degraded.labels)
    for k in range(12):
        assert torch.equal(fixed[k]["image"], degraded[k]["image"]) and fixed[k]["caption"] == degraded[k]["caption"]
    assert fixed[3] is fixed[3]  # kept, not made again


def _encoder():
    torch.manual_seed(0)
    model = load_config("smoke").model
    return build_image_encoder(ModelConfig(**{**model.__dict__, "image_size": 32})).eval()


def test_feature_cache_is_exact_and_invalidated_when_the_weights_change(tmp_path):
    split = _synthetic_train()
    views = TrainingViews(FaceCaptionDataset(split.records[:50], seed=1), ["normal", "bad"])
    encoder = _encoder()

    def live(enc):  # the encoder on the same batches of 16 photos
        with torch.no_grad():
            outputs = [[enc(collate_batch([views[v * 50 + i] for i in range(s, min(s + 16, 50))])["image"])
                        for s in range(0, 50, 16)] for v in range(2)]
        return [tuple(torch.cat(part) for part in zip(*view)) for view in outputs]

    def array(values):
        return torch.from_numpy(np.array(values))

    arrays, encoded = cached_features(encoder, views, tmp_path, "synthetic", batch_size=16)
    assert encoded == 2 and isinstance(arrays[0][0], np.memmap)
    for (cached_global, cached_regions), (feature, regions) in zip(arrays, live(encoder)):
        assert torch.equal(array(cached_global), feature) and torch.equal(array(cached_regions), regions)
    features = FeatureViews(views, arrays)
    batch = features.__getitems__([73, 2, 51])
    assert torch.equal(batch["global"][0], array(arrays[1][0][23]))
    assert torch.equal(batch["regions"][1], array(arrays[0][1][2]))
    assert batch["label"].tolist() == views.labels[[73, 2, 51]].tolist()
    assert cached_features(encoder, views, tmp_path, "synthetic", batch_size=16)[1] == 0
    entries = sorted(p for p in tmp_path.glob("*/*"))
    # a second job sharing the cache that encoded the same entry meanwhile keeps the first one's files
    # (which the first may be reading) and leaves no temporary behind
    view0 = next(p for p in entries if "-view0-" in p.parent.name)
    first_files = os.stat(view0 / REGIONS_FILE).st_ino
    _write_entry(encoder, views, 0, view0, 16, 0, "cpu", False)
    assert os.stat(view0 / REGIONS_FILE).st_ino == first_files
    assert sorted(p for p in tmp_path.glob("*/*")) == entries
    with torch.no_grad():
        next(encoder.parameters()).add_(0.5)
    arrays, encoded = cached_features(encoder, views, tmp_path, "synthetic", batch_size=16)
    assert encoded == 2 and not any(p.exists() for p in entries)
    assert torch.equal(array(arrays[1][0]), live(encoder)[1][0])


def test_blocked_pair_scores_equal_the_indexed_pairs():
    generator = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 9, (41,), generator=generator)
    probe, reference = torch.randn(41, 12, generator=generator), torch.randn(41, 12, generator=generator)
    pairs = verification_pairs(labels.numpy())
    expected = pair_scores(probe, reference, pairs.pairs, pairs.genuine)
    for block in (1, 7, 64):
        genuine, impostor = all_pair_scores(probe, reference, labels, block_size=block)
        np.testing.assert_allclose(genuine, expected[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(impostor, expected[1], rtol=1e-6, atol=1e-6)


def test_skip_bad_run_lists_what_it_skipped_and_resume_needs_the_same_data(tmp_path, capsys):
    files = make_tree("face2text", tmp_path / "data", identities=6, photos=2)
    files["images"][3].write_bytes(b"\xff\xd8 truncated")
    run = tmp_path / "run"
    argv = ["train", "--preset", "smoke", "--out", str(run), "--dataset", "face2text", "--data-root",
            str(tmp_path / "data"), "image.epochs=0", "fusion.epochs=0"]
    assert main([*argv, "--skip-bad"]) == 0
    split = json.loads((run / "split.json").read_text())
    assert len(split["skipped"]) == 1 and str(files["images"][3]) in split["skipped"][0]
    assert split["num_train"] + split["num_test"] == 11
    files["images"][0].unlink()
    # a step left to train reads the data again (a finished run is not touched, its data not read)
    more = [arg if arg != "fusion.epochs=0" else "fusion.epochs=1" for arg in argv]
    error = _cli_error(capsys, [*more, "--skip-bad", "--resume"])
    assert "split.json" in error and "another split" in error
