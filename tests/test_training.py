"""Training: configuration, the three steps end to end, checkpoints, exact resume after a kill."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tgfr.config import ConfigError
from tgfr.engine import Engine
from tgfr.models import TGFRModel
from tgfr.models.text import Vocabulary
from tgfr.training import load_config, load_model, read_checkpoint, train
from tgfr.training import run as training_run
from tgfr.training.data import build_splits
from tgfr.training.steps import FusionStep

# a few seconds per run: 12 training identities, 32-pixel faces
TINY = [
    "data.num_identities=20", "data.images_per_identity=3", "data.captions_per_image=2",
    "image.batch_size=16", "align.batch_size=16", "fusion.batch_size=16",
]


def _config(*overrides):
    return load_config("smoke", [*TINY, *overrides])


def _log(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=f"{key} differs")


# ---------------------------------------------------------------- config


def test_presets_overrides_and_yaml(tmp_path):
    config = load_config("demo", ["align.epochs=7", "align.weights.id=0", "model.text_encoder=minilm",
                                  "fusion.lr_milestones=[1, 2]", "data.num_identities=50"])
    assert config.align.epochs == 7 and config.align.weights.id == 0
    assert config.model.text_encoder == "minilm" and config.fusion.lr_milestones == [1, 2]
    assert config.data.num_identities == 50
    assert config.model.image_size == load_config("demo").model.image_size
    path = tmp_path / "run.yaml"
    path.write_text("preset: smoke\nseed: 3\nmodel:\n  dim: 48\nalign:\n  weights:\n    cicl: 0.5\n")
    config = load_config(path, ["seed=4"])
    assert (config.seed, config.model.dim, config.align.weights.cicl) == (4, 48, 0.5)
    assert config.model.image_size == load_config("smoke").model.image_size


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'align.wieghts'"):
        load_config("smoke", ["align.wieghts.id=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config("smoke", ["align.epochs"])
    with pytest.raises(ValueError, match="preset .* or a YAML file"):
        load_config("no-such-preset")


# ---------------------------------------------------------------- training


def test_train_writes_log_checkpoint_and_a_loadable_model(tmp_path):
    out = tmp_path / "run"
    checkpoint = train(_config(), out)
    log = _log(out)
    assert [(r["step"], r["epoch"]) for r in log] == [("image", 1), ("align", 1), ("fusion", 1)]
    assert {"wrcl", "id", "cicl", "imcl", "loss"} <= log[1].keys()
    assert all(r["loss"] > 0 and r["samples"] > 0 for r in log)
    state = read_checkpoint(checkpoint)  # plain tensors and containers: weights_only loads it
    assert state["progress"] == {"step": "fusion", "epochs_done": 1}
    assert (out / "config.yaml").exists()
    model = load_model(out)
    assert not model.training
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    captions = ["a young man with a beard", "an old woman", "a woman with glasses"]
    for mode in ("image", "flf", "tgfr"):
        assert model.embed(images, captions, mode).shape[0] == 3
    with pytest.raises(FileExistsError, match="already holds a training run"):
        train(_config(), out)


def test_a_runs_config_yaml_trains_the_same_run_again(tmp_path):
    first = tmp_path / "first"
    train(_config("align.lr=2e-3"), first)
    again = tmp_path / "again"
    train(load_config(first / "config.yaml"), again)
    _assert_same_weights(read_checkpoint(first)["model"], read_checkpoint(again)["model"])
    assert (again / "config.yaml").read_text() == (first / "config.yaml").read_text()


def test_training_changes_only_the_current_step_modules(tmp_path):
    train(_config("align.epochs=0", "fusion.epochs=0"), tmp_path / "image_only")
    after_image = read_checkpoint(tmp_path / "image_only")["model"]
    train(_config("fusion.epochs=0"), tmp_path / "aligned")
    after_align = read_checkpoint(tmp_path / "aligned")["model"]
    for key in after_image:
        same = torch.equal(after_image[key], after_align[key])
        if key.startswith(("image_encoder.", "fcfm.", "flf.")):
            assert same, f"{key} must stay frozen (or untouched) in the align step"
    assert not torch.equal(after_image["word_projection.convs.0.weight"], after_align["word_projection.convs.0.weight"])


def _fused_impostor_cosine(fusion_optimizer: str, seed: int, steps: int = 40) -> float:
    """Mean cosine between different identities' FCFM embeddings after ``steps`` of step 2 at the paper's
    SGD (0.1, momentum 0.9, ArcFace s=64, m=0.5) on frozen face outputs with one well-separated centre
    per identity."""
    config = _config("fusion.lr=0.1", "fusion.momentum=0.9", "fusion.arcface_scale=64", "fusion.arcface_margin=0.5",
                     "fusion.modes=[tgfr]", f"fusion.fusion_optimizer={fusion_optimizer}")
    torch.manual_seed(seed)
    split = build_splits(config).train
    captions = [record.captions[0] for record in split.records]
    model = TGFRModel(config.model, Vocabulary.from_captions(captions)).eval()
    step = FusionStep(model, config, split, torch.device("cpu"))
    model.fcfm.train()
    labels = torch.as_tensor(split.labels)
    encoder, generator = model.image_encoder, torch.Generator().manual_seed(seed + 1)
    centres = torch.randn(len(labels), encoder.embedding_size, generator=generator)[labels]
    region_centres = torch.randn(len(labels), encoder.region_channels, encoder.region_size, encoder.region_size,
                                 generator=generator)[labels]

    def frozen_outputs(rows):
        return (centres[rows] + 0.3 * torch.randn(centres[rows].shape, generator=generator),
                region_centres[rows] + 0.3 * torch.randn(region_centres[rows].shape, generator=generator))

    for _ in range(steps):
        rows = torch.randperm(len(labels), generator=generator)[:16]
        feature, regions = frozen_outputs(rows)
        batch = {"global": feature, "regions": regions, "label": labels[rows], "text": [captions[i] for i in rows]}
        step.optimizer.zero_grad()
        step.loss(batch)["loss"].backward()
        step.optimizer.step()
    model.eval()
    with torch.no_grad():
        fused = model.fuse(model.project_image(*frozen_outputs(torch.arange(len(labels)))), model.encode_text(captions),
                           "tgfr")
    cosine = F.normalize(fused, dim=-1) @ F.normalize(fused, dim=-1).T
    return float(cosine[labels[:, None] != labels[None, :]].mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_step_two_at_the_papers_sgd_rate_does_not_collapse_the_fcfm(seed):
    # Adam on the fusion (the authors' code, the default) keeps different people apart; the FCFM on the
    # ArcFace heads' SGD 0.1 / momentum 0.9 sends every embedding along one direction (cosine -> 1)
    # within ten steps, which shows this check can fail
    assert _fused_impostor_cosine("adam", seed) < 0.5
    assert _fused_impostor_cosine("sgd", seed) > 0.9


def test_a_zero_caption_learning_rate_freezes_the_caption_encoder(tmp_path, monkeypatch):
    calls = []  # (training mode, any parameter requiring a gradient) at each caption encoder call

    def model_with_a_watched_text_encoder(*args, **kwargs):
        model = model_class(*args, **kwargs)
        model.text_encoder.register_forward_hook(
            lambda module, _inputs, _output: calls.append(
                (module.training, any(p.requires_grad for p in module.parameters()))))
        return model

    model_class = training_run.TGFRModel
    monkeypatch.setattr(training_run, "TGFRModel", model_with_a_watched_text_encoder)
    train(_config("fusion.epochs=0"), tmp_path / "trained")
    assert calls and all(call == (True, True) for call in calls)
    calls.clear()
    train(_config("fusion.epochs=0", "align.text_lr=0"), tmp_path / "frozen")
    assert calls and all(call == (False, False) for call in calls)  # eval mode (no dropout), no gradient


def test_resume_adds_epochs_without_redoing_finished_ones(tmp_path):
    first = tmp_path / "interrupted"
    train(_config("fusion.epochs=1"), first)
    train(_config("fusion.epochs=2"), first, resume=True)
    assert [(r["step"], r["epoch"]) for r in _log(first)] == [
        ("image", 1), ("align", 1), ("fusion", 1), ("fusion", 2)]
    straight = tmp_path / "straight"
    train(_config("fusion.epochs=2"), straight)
    _assert_same_weights(read_checkpoint(first)["model"], read_checkpoint(straight)["model"])


def test_resume_at_a_step_boundary_matches_a_straight_run(tmp_path):
    stopped = tmp_path / "stopped"
    train(_config("fusion.epochs=0"), stopped)
    train(_config(), stopped, resume=True)
    straight = tmp_path / "straight"
    train(_config(), straight)
    _assert_same_weights(read_checkpoint(stopped)["model"], read_checkpoint(straight)["model"])


@pytest.mark.parametrize("killed_in", ["align", "fusion"])  # fusion: two optimizers (Adam, SGD) resume
def test_run_killed_mid_step_resumes_at_its_first_unfinished_epoch(tmp_path, monkeypatch, killed_in):
    config = [f"{killed_in}.epochs=2"]
    train_epoch = Engine._train_epoch

    def killed_in_second_epoch(engine, stage, runner, position, number):
        if stage.name == killed_in and number == 1:
            raise KeyboardInterrupt
        return train_epoch(engine, stage, runner, position, number)

    out = tmp_path / "killed"
    monkeypatch.setattr(Engine, "_train_epoch", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_config(*config), out)
    assert read_checkpoint(out)["progress"] == {"step": killed_in, "epochs_done": 1}
    monkeypatch.setattr(Engine, "_train_epoch", train_epoch)
    train(_config(*config), out, resume=True)
    epochs = {"image": 1, "align": 1, "fusion": 1, killed_in: 2}
    assert [(r["step"], r["epoch"]) for r in _log(out)] == [
        (step, epoch + 1) for step, count in epochs.items() for epoch in range(count)]
    straight = tmp_path / "straight"
    train(_config(*config), straight)
    _assert_same_weights(read_checkpoint(out)["model"], read_checkpoint(straight)["model"])


def test_resume_refuses_a_different_model(tmp_path):
    out = tmp_path / "run"
    train(_config("align.epochs=0", "fusion.epochs=0"), out)
    with pytest.raises(ValueError, match=r"model\.dim"):
        train(_config("model.dim=48"), out, resume=True)


def test_pretrained_face_encoder_skips_step_zero_and_stays_frozen(tmp_path):
    from tgfr.models import IResNet

    torch.manual_seed(0)
    encoder = IResNet((1, 1, 1, 1), base_width=8, input_size=32, embedding_size=64)
    torch.save(encoder.state_dict(), tmp_path / "backbone.pth")
    out = tmp_path / "run"
    train(_config(f"model.image_weights={tmp_path / 'backbone.pth'}"), out)
    assert [r["step"] for r in _log(out)] == ["align", "fusion"]
    model = load_model(out)
    assert model.config.image_layers == [1, 1, 1, 1] and model.config.image_embedding == 64
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(model.image_encoder.state_dict()[key], value)


def test_resume_never_rewrites_a_finished_run_and_names_a_finished_step(tmp_path, capsys):
    """What is on disk describes what ran: resuming a finished run with its config trains and writes nothing;
    more epochs for a finished step stop with exit 2 naming the step, the run's files untouched."""
    from tgfr.cli import main

    out = tmp_path / "run"
    train(_config(), out)

    def files():
        return {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.iterdir() if path.is_file()}

    before, lines = files(), []
    assert train(_config(), out, resume=True, log=lines.append) == out / "checkpoint.pt"
    assert len(lines) == 1 and "nothing left to train" in lines[0] and files() == before
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--preset", "smoke", "--out", str(out), "--resume", *TINY, "align.epochs=2"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "step 'align' has finished" in err and "align.epochs (1 -> 2)" in err
    assert files() == before


def test_resume_where_there_is_no_run_is_a_usage_error(tmp_path, capsys):
    """A mistyped --out with --resume does not start a new run."""
    from tgfr.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["train", "--preset", "smoke", "--out", str(tmp_path / "typo"), "--resume"])
    assert stopped.value.code == 2 and "holds no run to continue" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
