"""Metrics against scikit-learn and constructed cases; report writing on fake embeddings."""
import json

import numpy as np
import pytest
import sklearn.metrics
import torch
from scipy.interpolate import interp1d
from scipy.optimize import brentq

from tgfr.evaluation import metrics, report


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


def test_pair_scores_split_by_identity():
    generator = torch.Generator().manual_seed(4)
    probe, reference = torch.randn(6, 8, generator=generator), torch.randn(5, 8, generator=generator)
    probe_ids, reference_ids = torch.tensor([0, 0, 1, 2, 3, 3]), torch.tensor([0, 1, 1, 3, 4])
    genuine, impostor = metrics.pair_scores(probe, probe_ids, reference, reference_ids)
    cosine = torch.nn.functional.normalize(probe, dim=1) @ torch.nn.functional.normalize(reference, dim=1).T
    same = probe_ids[:, None] == reference_ids[None, :]
    assert genuine.size == int(same.sum()) == 6 and impostor.size == 30 - 6
    np.testing.assert_allclose(np.sort(genuine), np.sort(cosine[same].numpy()), rtol=1e-6)
    np.testing.assert_allclose(np.sort(impostor), np.sort(cosine[~same].numpy()), rtol=1e-6)


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="genuine"):
        metrics.roc_curve([], [0.0])
    with pytest.raises(ValueError, match="impostor"):
        metrics.roc_curve([1.0], [[0.0]])
    with pytest.raises(ValueError, match="probe_ids"):
        metrics.rank1_accuracy(torch.randn(3, 4), torch.tensor([0, 1]), torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="far"):
        metrics.min_impostors_for_far(0.0)


def _fake_embeddings(seed, num_identities, per_identity, dim, noise):
    """Identity centres plus noise: larger noise plays the part of a worse probe quality."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_identities, dim, generator=generator)
    ids = torch.arange(num_identities).repeat_interleave(per_identity)
    return centres[ids] + noise * torch.randn(ids.numel(), dim, generator=generator), ids


def test_write_report_on_fake_embeddings(tmp_path):
    noise_per_level = {"normal": 0.3, "poor": 0.8, "bad": 1.2, "very_bad": 2.0}
    results = []
    for mode_index, mode in enumerate(("image", "tgfr")):
        for level, noise in noise_per_level.items():
            probe, probe_ids = _fake_embeddings(10 + mode_index, 40, 3, 16, noise)
            gallery, gallery_ids = _fake_embeddings(10 + mode_index, 40, 1, 16, 0.0)
            results.append(report.score_embeddings(mode, level, probe, probe_ids, gallery, gallery_ids))
    paths = report.write_report(results, tmp_path / "out", metadata={"checkpoint": "fake"})

    table_rows = [line for line in paths["markdown"].read_text().splitlines() if line.startswith("| ")]
    for level in noise_per_level:
        assert sum(f"| {level} |" in row for row in table_rows) == 2
    # 120 probes x 40 gallery, 120 genuine: 4680 impostors resolve FAR 1e-3 only.
    assert sum(row.count("n/a") for row in table_rows) == 2 * 2 * 4
    document = json.loads(paths["json"].read_text())
    assert [(row["mode"], row["level"]) for row in document["results"]] == [(r.mode, r.level) for r in results]
    assert document["results"][0]["num_impostor_pairs"] == 120 * 40 - 120
    assert document["results"][0]["tar_at_far"]["1e-05"] is None
    assert document["metadata"] == {"checkpoint": "fake"}
    assert paths["roc"].stat().st_size > 10_000
    # Noisier probes verify worse and identify worse.
    image_rows = [r for r in results if r.mode == "image"]
    assert image_rows[0].verification.eer < image_rows[-1].verification.eer
    assert image_rows[0].rank1 > image_rows[-1].rank1


def test_score_embeddings_rejects_disjoint_identities():
    probe, probe_ids = _fake_embeddings(5, 3, 2, 8, 0.1)
    with pytest.raises(ValueError, match="no probe shares an identity"):
        report.score_embeddings("image", "normal", probe, probe_ids, probe, probe_ids + 100)
