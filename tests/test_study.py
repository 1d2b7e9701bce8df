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
    preset_overrides = ["model.imim_norm=batch", "model.imim_gate=false", "model.fcfm_coarse_keys=global",
                        "model.fcfm_face_feature=none", "align.imcl=views", "align.scaling=paper",
                        "align.mask_same_identity=false"] if system == "paper" else []
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


def test_paper_preset_follows_section_4_2():
    config = load_config("paper")
    assert (config.align.batch_size, config.align.weight_decay, config.align.epochs) == (16, 0.01, 20)
    fusion = config.fusion
    assert (fusion.lr, fusion.momentum, fusion.weight_decay, fusion.epochs, fusion.lr_milestones) == \
        (0.1, 0.9, 1e-4, 36, [6, 24])
    assert (config.align.imcl, config.align.scaling, config.model.imim_norm, config.model.fcfm_face_feature) == \
        ("views", "paper", "batch", "none")
    assert config.align.qualities == ["normal"] and fusion.qualities == ["normal"]


def test_study_smoke_writes_tables_and_figures_and_reuses_finished_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    assert cli.main(["study", "--preset", "tiny", "--seeds", "0", "--text-model", "none", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for table in ("Table 2", "Table 3", "Table 5"):
        assert table in printed
    markdown = (out / "study.md").read_text()
    for row in ("image only", "BiLSTM-FLF", "TGFR (paper)", "TGFR (tgfr variants)", "WRCL only", "WRCL + IMCL",
                "trained on normal (paper)", "mixed"):
        assert row in markdown
    document = json.loads((out / "study.json").read_text())
    assert document["details"]["seeds"] == [0]
    level = document["results"]["tgfr"]["0"]["tgfr"]["very_bad"]
    assert {"tar@1e-05", "tar@0.0001", "tar@0.001", "eer", "rank1", "roc"} <= level.keys()
    assert 0.0 <= level["eer"] <= 1.0
    for figure in ("roc.png", "faces.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"

    # a second call reuses every finished run: nothing is trained again
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("tgfr.training.train", no_training)
    assert cli.main(["study", "--preset", "tiny", "--seeds", "0", "--text-model", "none", "--out", str(out)]) == 0
    assert (out / "study.md").read_text().split("- wall_seconds")[0] == markdown.split("- wall_seconds")[0]
    capsys.readouterr()

    # ... but no run trained with another config: the study stops before training and names them
    with pytest.raises(SystemExit) as error:
        cli.main(["study", "--preset", "tiny", "--seeds", "0", "--text-model", "none", "--out", str(out),
                  "training.fusion.lr=0.05"])
    message = capsys.readouterr().err
    assert error.value.code == 2 and "trained with another config" in message
    assert "seed0/tgfr (fusion.lr)" in message and "seed0/wrcl (fusion.lr)" in message
    assert not (out / "seed1").exists()


def test_study_usage_errors(capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["study", "--text-model", "/no/such/model"])
    assert error.value.code == 2 and "tgfr study: error: --text-model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["study", "align.no_such_key=1"])
    assert "unknown config key" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["quick", "paper", "tiny"])
def test_study_presets_give_valid_configs(preset, tmp_path):
    from tgfr.study import load_study_config, plan

    model_dir = tmp_path / "transformer"  # a local model directory: the BERT-like rows are planned too
    model_dir.mkdir()
    study = load_study_config(preset, [f"text_model={model_dir}"])
    faces, planned, _ = plan(study, tmp_path / "study")
    assert {"bert_flf", "cgfr", "tgfr"} <= {p.run.name for p in planned}
    for config in [*faces.values(), *(p.config for p in planned)]:
        for step in (config.image, config.align, config.fusion):
            # YAML reads "2e-3" as a string: every rate must arrive as a number
            assert all(isinstance(getattr(step, key), float) for key in ("lr", "weight_decay")), preset
        assert isinstance(config.align.text_lr, float), preset
    bert = next(p.config for p in planned if p.run.name == "bert_flf")
    assert bert.model.text_encoder == str(model_dir)
    if study.transformer_text_lr is not None:
        assert bert.align.text_lr == study.transformer_text_lr


def test_study_markdown_states_the_presets_deviations_from_the_paper():
    from tgfr.study import load_study_config, study_markdown

    quick = load_study_config("quick").deviations
    assert "frozen" in quick and not load_study_config("paper").deviations
    details = {"preset": "quick", "deviations": quick, "seeds": [0, 1, 2]}
    assert f"Deviations from the paper: {quick}." in study_markdown({}, details)
    assert "Deviations" not in study_markdown({}, {"preset": "paper", "seeds": [0]})
