"""Training: configuration, the three steps end to end, checkpoints, exact resume after a kill."""
from __future__ import annotations

import json

import pytest
import torch

from tgfr.config import ConfigError
from tgfr.engine import Engine
from tgfr.training import load_config, load_model, read_checkpoint, train
from tgfr.training import run as training_run

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


def test_run_killed_mid_step_resumes_at_its_first_unfinished_epoch(tmp_path, monkeypatch):
    config = ["align.epochs=2"]
    train_epoch = Engine._train_epoch

    def killed_in_second_align_epoch(engine, stage, runner, position, number):
        if stage.name == "align" and number == 1:
            raise KeyboardInterrupt
        return train_epoch(engine, stage, runner, position, number)

    out = tmp_path / "killed"
    monkeypatch.setattr(Engine, "_train_epoch", killed_in_second_align_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_config(*config), out)
    assert read_checkpoint(out)["progress"] == {"step": "align", "epochs_done": 1}
    monkeypatch.setattr(Engine, "_train_epoch", train_epoch)
    train(_config(*config), out, resume=True)
    assert [(r["step"], r["epoch"]) for r in _log(out)] == [
        ("image", 1), ("align", 1), ("align", 2), ("fusion", 1)]
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
