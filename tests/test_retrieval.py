"""X-Modal retrieval: graded-negative loss, R@K, change pairs, and the commands end to end."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import assert_close

from tgfr.data.changes import CHANGEABLE, make_change_pair
from tgfr.data.identities import sample_identity
from tgfr.retrieval.evaluation import (
    after_above_before,
    chance_metrics,
    expected_metrics,
    retrieval_metrics,
)
from tgfr.retrieval.loss import GRADES, AttributeLoss, active_grades, graded_mnrl


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


def _tie_orders_average(scores, relevant, ks):
    """The metrics averaged over every order of the gallery that keeps the scores' order (brute force)."""
    import itertools

    width = scores.shape[1]
    totals = {}
    orders = list(itertools.permutations(range(width)))
    for order in orders:
        tie_break = torch.tensor(order, dtype=torch.float64) * 1e-6  # below every score gap
        for name, value in retrieval_metrics(scores + tie_break, relevant, ks).items():
            totals[name] = totals.get(name, 0.0) + value / len(orders)
    return totals


def test_expected_metrics_average_over_tie_orders():
    generator = torch.Generator().manual_seed(0)
    ks = (1, 2, 4)
    for _ in range(5):
        scores = torch.randint(0, 3, (4, 6), generator=generator).double()  # many ties
        relevant = torch.rand(4, 6, generator=generator) < 0.3
        relevant[torch.arange(4), torch.randint(0, 6, (4,), generator=generator)] = True
        expected = expected_metrics(scores, relevant, ks)
        brute = _tie_orders_average(scores, relevant, ks)
        for name in ("R@1", "R@2", "R@4", "mAP"):
            assert_close(expected[name], brute[name], rtol=0, atol=1e-9, msg=name)
        # without ties nothing is left to chance: the plain metrics, median rank included
        distinct = scores + torch.rand(4, 6, generator=generator) * 0.5
        assert expected_metrics(distinct, relevant, ks) == pytest.approx(retrieval_metrics(distinct, relevant, ks),
                                                                         abs=1e-12)


def test_chance_metrics_exact():
    # one relevant item among 10 candidates (the 11th item excluded): rank uniform on 1..10
    relevant = torch.zeros(3, 11, dtype=torch.bool)
    relevant[:, 4] = True
    candidates = torch.ones(3, 11, dtype=torch.bool)
    candidates[:, 10] = False
    m = chance_metrics(relevant, candidates, ks=(1, 5, 10))
    assert m["R@1"] == pytest.approx(0.1) and m["R@5"] == pytest.approx(0.5) and m["R@10"] == pytest.approx(1.0)
    assert m["mAP"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)  # mean of 1 / rank
    assert m["median rank"] == 5.5
    # two relevant among four: P(first relevant at rank 1) = 1/2, AP averaged over the 6 placements
    two = torch.tensor([[True, True, False, False]])
    m = chance_metrics(two, ks=(1, 2))
    assert m["R@1"] == pytest.approx(0.5) and m["R@2"] == pytest.approx(5 / 6)
    placements = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]
    assert m["mAP"] == pytest.approx(np.mean([(1 / a + 2 / b) / 2 for a, b in placements]))


def test_after_above_before_counts_ties_against_with_wilson_interval():
    # pairs 0-3: target column p, second before photo column 4 + p
    scores = torch.zeros(4, 8)
    scores[0, 0], scores[0, 4] = 0.9, 0.1   # above
    scores[1, 1], scores[1, 5] = 0.8, 0.2   # above
    scores[2, 2], scores[2, 6] = 0.5, 0.5   # tie: against
    scores[3, 3], scores[3, 7] = 0.1, 0.7   # below
    m = after_above_before(scores)
    assert m["after above before"] == 0.5
    z = 1.959963984540054  # Wilson: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    centre, half = (0.5 + z * z / 8) / (1 + z * z / 4), z * np.sqrt(0.25 / 4 + z * z / 64) / (1 + z * z / 4)
    assert m["after above before low"] == pytest.approx(centre - half, abs=1e-9)
    assert m["after above before high"] == pytest.approx(centre + half, abs=1e-9)
    with pytest.raises(ValueError, match=r"\[P, 2P\]"):
        after_above_before(torch.zeros(4, 6))
    # per changed attribute: pair 0 changed glasses and hair, 1 glasses, 2 hair, 3 glasses
    changed = [{"eyeglasses": (False, True), "hair_color": ("red", "gray")}, {"eyeglasses": (True, False)},
               {"hair_color": ("black", "blond")}, {"eyeglasses": (False, True)}]
    assert after_above_before(scores, changed)["after above before by change"] == {
        "eyeglasses": [pytest.approx(2 / 3), 3], "hair_color": [0.5, 2]}
    with pytest.raises(ValueError, match="each of the 4 pairs"):
        after_above_before(scores, changed[:3])


def _hand_made_split():
    """Three people, two photos each; composed pairs of people 0 and 1 (one pair each)."""
    from tgfr.retrieval.data import ChangeSet, FaceSet, RetrievalSplit

    people = [{"hair": "black", "glasses": True, "age": "young"},
              {"hair": "black", "glasses": False, "age": "young"},
              {"hair": "blond", "glasses": True, "age": "old"}]
    identities = np.repeat([0, 1, 2], 2)
    attributes = [dict(people[k]) for k in identities]
    statements = [{"hair": "black", "glasses": True},      # person 0: unique match -> R@1
                  {"hair": "black"},                        # person 0: ties with person 1 -> ties against
                  {"glasses": False, "age": "young"},       # person 1: unique
                  {"hair": "blond", "age": "young"},        # person 1, both wrong: reads what is said
                  {"hair": "blond"},                        # person 2: unique
                  {"age": "old", "glasses": True}]          # person 2: unique
    images = np.zeros((6, 16, 16, 3), dtype=np.uint8)
    faces = FaceSet(images, identities, [("a caption",)] * 6, attributes, statements)
    after = [dict(people[0], glasses=False), dict(people[1], hair="blond")]
    changes = ChangeSet(identities=np.array([0, 1]), reference=images[:2], target=images[:2],
                        other_before=images[:2], captions=["no glasses", "dyed blond"], after_attributes=after,
                        before_attributes=[people[0], people[1]],
                        changes=[{"glasses": (True, False)}, {"hair": ("black", "blond")}])
    return RetrievalSplit(faces, changes)


def test_attribute_and_composed_oracles_on_a_hand_made_gallery():
    from tgfr.retrieval.oracle import composed_oracle_scores, text_oracle_scores

    split = _hand_made_split()
    scores = text_oracle_scores(split.faces)
    assert scores[0].tolist() == [2, 2, 1, 1, 1, 1] and scores[3].tolist() == [1, 1, 1, 1, 1, 1]
    own = torch.eye(6, dtype=torch.bool)
    relevant = torch.as_tensor(split.faces.identities[:, None] == split.faces.identities[None]) & ~own
    m = retrieval_metrics(scores.masked_fill(own, float("-inf")), relevant, ks=(1,))
    # found first: queries 0 (photo 1 alone at 2), 2, 4, 5; query 1 ties persons 0 and 1, query 3 ties all
    assert m["R@1"] == pytest.approx(4 / 6)
    # composed: the person's target first, its before photo second, other people after
    composed = composed_oracle_scores(split.changes)
    assert composed.shape == (2, 4)
    assert composed[0].argmax() == 0 and composed[0, 2] > composed[0, 1] and composed[0, 2] > composed[0, 3]
    assert composed[1].argmax() == 1 and composed[1, 3] > composed[1, 0]
    assert after_above_before(composed)["after above before"] == 1.0


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

def test_train_eval_retrieve_smoke(xmodal_run, tmp_path, capsys):
    import shutil

    from PIL import Image

    from tgfr.cli import main

    # a copy without the shared run's index and evaluation, which other tests may have made already
    run = shutil.copytree(xmodal_run, tmp_path / "run", ignore=shutil.ignore_patterns("index", "eval"))
    assert (run / "checkpoint.pt").is_file() and len((run / "log.jsonl").read_text().splitlines()) == 2
    assert main(["xmodal", "eval", "--checkpoint", str(run)]) == 0
    out = capsys.readouterr().out
    for label in ("R@1", "R@10", "mAP", "median rank", "text -> face", "text + image -> face",
                  "TGFR word-region score", "CLIP-style", "image only", "attribute oracle", "ties at random",
                  "oracle (person + change)", "chance", "after above before [95 % CI]"):
        assert label in out
    results = json.loads((run / "eval" / "xmodal_eval.json").read_text())["results"]
    composed = results["text + image -> face"]
    assert composed["chance"]["after above before"] == 0.5
    assert composed["oracle (person + change)"]["after above before"] == 1.0
    text = results["text -> face"]
    assert text["attribute oracle, ties at random"]["R@1"] >= text["attribute oracle"]["R@1"]

    grid = tmp_path / "grid.png"
    assert main(["retrieve", "--checkpoint", str(run), "--text", "A young man with short black hair.",
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
        assert main(["retrieve", "--checkpoint", str(run), "--text", "now wears glasses",
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
def test_retrieve_bad_input_is_a_usage_error(xmodal_run, tmp_path, capsys, extra, message):
    from tgfr.cli import main

    extra = [str(tmp_path / e) if e in ("missing.png", "no_gallery") else e for e in extra]
    with pytest.raises(SystemExit) as exit_info:
        main(["retrieve", "--checkpoint", str(xmodal_run), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "tgfr retrieve: error:" in err and message in err and "Traceback" not in err


def test_retrieve_leaves_out_undecodable_photos_only_with_skip_bad(xmodal_run, tmp_path, capsys):
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
    query = ["retrieve", "--model", str(xmodal_run), "--text", "a beard", "--gallery", str(gallery), "--top-k", "2"]
    with pytest.raises(SystemExit) as stopped:
        main(query)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "broken.png" in err and "--skip-bad" in err and len(err.splitlines()) == 1
    assert main([*query, "--skip-bad"]) == 0
    assert "skipped 1 photo(s) that do not decode: broken" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        main([*query, "--skip-bad", "--match", "nobody"])
    assert stopped.value.code == 2 and "'nobody' is neither an identity nor a photo name" in capsys.readouterr().err


def test_xmodal_bad_config_and_existing_run_are_usage_errors(xmodal_run, capsys):
    from tgfr.cli import main

    for argv, message in ((["xmodal", "train", "--out", str(xmodal_run)], "already holds a run"),
                          (["xmodal", "train", "--preset", "tiny", "--out", str(xmodal_run / "x"), "epochz=1"],
                           "unknown config key"),
                          (["xmodal", "train", "--preset", "nope", "--out", str(xmodal_run / "x")], "preset"),
                          (["xmodal", "train", "--preset", "tiny", "--out", str(xmodal_run / "x"),
                            "attribute_names=[eyeglasses, glases]"], "'attribute_names' names attributes the "
                           "synthetic photos do not have: ['glases']")):
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


@pytest.mark.parametrize("attribute_weight", [0, 1])  # with the attribute read-outs off and on (they resume too)
def test_killed_run_resumes_after_its_last_finished_epoch(xmodal_run, tmp_path, attribute_weight):
    import shutil

    from tgfr.retrieval.config import load_config
    from tgfr.retrieval.train import read_run, train_xmodal

    config = load_config("tiny", [f"attribute_weight={attribute_weight}"])
    runs = {name: tmp_path / name for name in ("killed", "straight")}
    for run in runs.values():
        run.mkdir()
        # rendered faces and sentence features: reuse, do not recompute
        for cache in [*xmodal_run.glob("tgfr_synthetic_*.npz"), *xmodal_run.glob("text_features_*.pt")]:
            shutil.copy(cache, run / cache.name)

    def killed_after_first_epoch(message):
        raise KeyboardInterrupt(message)

    with pytest.raises(KeyboardInterrupt):
        train_xmodal(config, runs["killed"], log=killed_after_first_epoch)
    assert read_run(runs["killed"])["progress"]["epochs_done"] == 1
    train_xmodal(config, runs["killed"], resume=True, log=lambda message: None)
    # the fixture is the tiny preset's straight run
    straight = xmodal_run if config == load_config("tiny") else runs["straight"]
    if straight is not xmodal_run:
        train_xmodal(config, straight, log=lambda message: None)
    assert ("attributes" in json.loads((straight / "log.jsonl").read_text().splitlines()[-1])) == (attribute_weight > 0)
    resumed = read_run(runs["killed"])
    assert resumed["progress"]["epochs_done"] == 2
    for name, value in read_run(straight)["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("before_negative", [False, True])
def test_before_negative_gives_each_composed_query_its_before_photo_from_the_first_step(before_negative, tmp_path):
    from tgfr.retrieval.config import load_config
    from tgfr.retrieval.data import build_retrieval_splits
    from tgfr.retrieval.train import XModalStage, build_model

    config = load_config("tiny", ["negatives=easy", f"before_negative={before_negative}", "epochs=1"])
    split = build_retrieval_splits(config.synthetic(), config.pairs_per_identity, tmp_path)["train"]
    stage = XModalStage(build_model(config, 8), config, split, text=None)
    batches = stage.start_epoch(SimpleNamespace(number=0))
    for batch in batches:
        composed, text = batch["composed"]["negatives"], batch["text"]["negatives"]
        assert list(text) == ["easy"]  # the text queries' negatives follow ``negatives`` alone
        if before_negative:
            assert list(composed) == ["easy", "hard"]
            # the hard column of pair i is pair i's second before photo (other_before[pairs])
            np.testing.assert_array_equal(composed["hard"], batch["composed"]["pairs"])
        else:
            assert list(composed) == ["easy"]


@pytest.mark.parametrize("names", [[], ["hair_color", "gender"]])
def test_the_read_outs_default_to_the_attributes_the_change_texts_edit(names, tmp_path):
    from tgfr.data.changes import CHANGEABLE
    from tgfr.retrieval.config import load_config
    from tgfr.retrieval.data import build_retrieval_splits
    from tgfr.retrieval.train import XModalStage, build_model

    config = load_config("tiny", ["attribute_weight=2", f"attribute_names={names}", "num_identities=40"])
    split = build_retrieval_splits(config.synthetic(), config.pairs_per_identity, tmp_path,
                                   config.train_pairs_per_identity)["train"]
    stage = XModalStage(build_model(config, 8), config, split, text=None)
    edited = {name for change in split.changes.changes for name in change}
    assert edited <= set(CHANGEABLE) and len(edited) > 2  # the data are not a degenerate draw
    assert set(stage.attributes.classes) == (set(names) or edited)
    assert stage.attributes.scale == config.scale
    assert set(stage.optimizer.param_groups[0]["params"]) >= set(stage.attributes.parameters())


def test_training_people_get_their_own_number_of_change_pairs_kept_with_the_faces(tmp_path, monkeypatch):
    import dataclasses

    import tgfr.retrieval.data as retrieval_data
    from tgfr.retrieval.config import load_config

    config = load_config("tiny", ["pairs_per_identity=1", "train_pairs_per_identity=3"])
    splits = retrieval_data.build_retrieval_splits(config.synthetic(), 1, tmp_path, 3)
    for name, per_person in (("train", 3), ("test", 1)):
        changes = splits[name].changes
        people = np.unique(splits[name].faces.identities)
        assert len(changes.captions) == per_person * len(people)
        assert sorted(set(changes.identities.tolist())) == people.tolist()
    assert len(set(splits["train"].changes.captions)) > len(np.unique(splits["train"].faces.identities))
    with pytest.raises(ValueError, match="train_pairs_per_identity must be >= 1"):  # not "as many as the test's"
        retrieval_data.build_retrieval_splits(config.synthetic(), 1, tmp_path, 0)
    # rendered once: a second build (the eval after train) reads them back exactly
    monkeypatch.setattr(retrieval_data, "make_change_pair", lambda *_: pytest.fail("rendered again"))
    again = retrieval_data.build_retrieval_splits(config.synthetic(), 1, tmp_path, 3)
    for name in ("train", "test"):
        for field in dataclasses.fields(retrieval_data.ChangeSet):
            first, second = getattr(splits[name].changes, field.name), getattr(again[name].changes, field.name)
            assert (np.array_equal(first, second) if isinstance(first, np.ndarray) else first == second), field.name
    assert isinstance(again["train"].changes.changes[0][next(iter(again["train"].changes.changes[0]))], tuple)


def test_split_fractions_reach_the_synthetic_set_and_are_checked():
    from tgfr.config import ConfigError
    from tgfr.retrieval.config import load_config

    assert load_config("tiny", ["split_fractions=[0.5, 0.2, 0.3]"]).synthetic().split_fractions == (0.5, 0.2, 0.3)
    with pytest.raises(ConfigError, match="split_fractions"):
        load_config("tiny", ["split_fractions=[0.5, 0.1, 0.1]"])


def test_attribute_loss_is_the_mean_cross_entropy_of_the_attributes_each_photo_has():
    seen = [{"beard": "full", "glasses": True, "hat": False}, {"beard": "none", "glasses": False, "hat": False},
            {"beard": "goatee", "glasses": True, "hat": False}]
    loss = AttributeLoss(seen, dim=6, scale=7.0).double()
    assert list(loss.classes) == ["beard", "glasses"]  # hat has one value: nothing to read
    photos = [{"beard": "none", "glasses": True}, {"beard": "stubble", "glasses": False}, {"glasses": True}]
    # an unseen value and a missing attribute leave that attribute out for that photo
    assert loss.targets(photos).tolist() == [[loss.classes["beard"]["none"], 1], [-100, 0], [-100, 1]]
    embeddings = (2.5 * torch.randn(3, 6, dtype=torch.float64)).requires_grad_()  # any length: cosine logits

    def cosine_logits(weight):  # written out: scale * cos(embedding, value vector)
        return 7.0 * torch.nn.functional.cosine_similarity(embeddings[:, None], weight[None], dim=2)

    beard, glasses = (cosine_logits(head.weight) for head in loss.heads)
    expected = (torch.nn.functional.cross_entropy(beard[:1], torch.tensor([loss.classes["beard"]["none"]]))
                + torch.nn.functional.cross_entropy(glasses, torch.tensor([1, 0, 1]))) / 2
    value = loss(embeddings, photos)
    torch.testing.assert_close(value, expected.to(value.dtype), rtol=1e-6, atol=1e-9)
    value.backward()
    assert embeddings.grad.abs().sum() > 0


def test_attribute_loss_reads_only_the_names_it_is_given():
    seen = [{"beard": "full", "glasses": True}, {"beard": "none", "glasses": False}]
    assert list(AttributeLoss(seen, dim=4, names=["glasses"]).classes) == ["glasses"]
    with pytest.raises(ValueError, match=r"\['moustache'\].*'beard', 'glasses'"):
        AttributeLoss(seen, dim=4, names=["glasses", "moustache"])
