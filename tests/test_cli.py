"""The tgfr command line: argument parsing, errors and forwarding; an end-to-end demo run."""
import json
import sys
import types
from pathlib import Path

import pytest

from tgfr import cli
from tgfr.data import QUALITY_LEVELS
from tgfr.evaluation import min_impostors_for_far


def _parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def _parse_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as raised:
        _parse(*argv)
    assert raised.value.code == 2
    return capsys.readouterr().err


def test_demo_defaults_and_overrides():
    args = _parse("demo")
    assert (args.out, args.preset, args.overrides) == (Path("tgfr-demo"), "demo", [])
    args = _parse("demo", "--preset", "smoke", "--out", "runs/x", "train.steps=3", "model.dim=64")
    assert (args.out, args.preset, args.overrides) == (Path("runs/x"), "smoke", ["train.steps=3", "model.dim=64"])


def test_train_needs_exactly_one_config_source(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("seed: 1\n")
    args = _parse("train", "--config", str(config), "--out", "o", "--resume", "lr=0.1")
    assert (args.config, args.preset, args.resume, args.overrides) == (config, None, True, ["lr=0.1"])
    assert "one of the arguments --config --preset is required" in _parse_error(capsys, "train", "--out", "o")
    assert "not allowed with" in _parse_error(capsys, "train", "--config", str(config), "--preset", "demo",
                                              "--out", "o")
    assert "no such file" in _parse_error(capsys, "train", "--config", str(tmp_path / "missing.yaml"), "--out", "o")
    assert "--out" in _parse_error(capsys, "train", "--preset", "demo")


def test_bad_arguments_are_named(capsys, tmp_path):
    assert "key=value" in _parse_error(capsys, "demo", "steps")
    assert "key=value" in _parse_error(capsys, "demo", "=3")
    assert "invalid choice: 'large'" in _parse_error(capsys, "demo", "--preset", "large")
    assert "no such file or directory" in _parse_error(capsys, "eval", "--checkpoint", str(tmp_path / "nope.pt"),
                                                       "--out", "o")
    assert "invalid choice: 'clip'" in _parse_error(capsys, "eval", "--checkpoint", str(tmp_path), "--out", "o",
                                                    "--modes", "clip")
    assert "integer >= 0" in _parse_error(capsys, "eval", "--checkpoint", str(tmp_path), "--out", "o",
                                          "--attention-examples", "-1")
    assert "COMMAND" in _parse_error(capsys)


@pytest.mark.parametrize("override, message", [
    ("model.nope=3", "unknown config key 'model.nope'"),
    ("align.epochs=[1", "not valid YAML"),
])
def test_config_mistakes_are_usage_errors(capsys, tmp_path, override, message):
    with pytest.raises(SystemExit) as raised:
        cli.main(["train", "--preset", "smoke", "--out", str(tmp_path / "run"), override])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, expected", [
    (["train", "--preset", "smoke", "align.optimizer=sgdd"],
     "tgfr train: error: config key 'align.optimizer' must be one of 'adam' or 'adamw'; got 'sgdd'"),
    (["train", "--preset", "smoke", "--dataset", "face2text"],
     "tgfr train: error: config key 'data_root' must give the directory of dataset 'face2text'"),
    (["study", "--preset", "tiny", "training.align.optimizer=sgdd"],
     "tgfr study: error: config key 'training.align.optimizer' must be one of 'adam' or 'adamw'; got 'sgdd'"),
    (["study", "--preset", "tiny", "--text-model", "/no/such/model"],
     "tgfr study: error: --text-model must be one of 'auto', 'minilm', 'none' or a local Hugging Face model"),
    (["xmodal", "train", "--preset", "tiny", "epochs=abc"],
     "tgfr xmodal train: error: config key 'epochs' must be int; got 'abc'"),
    (["xmodal", "train", "--preset", "tiny", "negatives=all"],
     "tgfr xmodal train: error: config key 'negatives' must be one of 'none', 'easy', 'semi_hard' or 'hard'"),
])
def test_a_bad_config_value_stops_the_command_before_any_work(capsys, tmp_path, argv, expected):
    """One line naming the key (or option), what it accepts and what was given; exit 2; nothing written."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as raised:
        cli.main([*argv, "--out", str(out)])
    error = capsys.readouterr().err
    assert raised.value.code == 2 and error.startswith(expected) and len(error.strip().splitlines()) == 1, error
    assert not out.exists()


def test_train_refuses_to_overwrite_a_run(capsys, tmp_path):
    """Whatever a run directory's checkpoint holds, a new run does not replace it."""
    from tgfr.engine import CHECKPOINT_NAME

    (tmp_path / CHECKPOINT_NAME).write_bytes(b"a run")
    with pytest.raises(SystemExit) as raised:
        cli.main(["train", "--preset", "smoke", "--out", str(tmp_path)])
    assert raised.value.code == 2
    assert "is damaged or was not written by tgfr" in capsys.readouterr().err
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == b"a run"


def test_eval_arguments(tmp_path):
    args = _parse("eval", "--checkpoint", str(tmp_path), "--out", "o", "--modes", "image", "tgfr",
                  "--levels", "normal", "bad")
    assert (args.model, args.modes, args.levels, args.attention_examples) == (
        tmp_path, ["image", "tgfr"], ["normal", "bad"], 4)
    assert _parse("eval", "--model", str(tmp_path)).model == tmp_path  # --checkpoint is its other name


def test_bench_forwards_every_argument(monkeypatch):
    received = []
    fake_bench = types.ModuleType("tgfr.bench")
    fake_bench.main = lambda argv, prog: received.append((argv, prog)) or 3
    monkeypatch.setitem(sys.modules, "tgfr.bench", fake_bench)
    monkeypatch.setattr("tgfr.bench", fake_bench, raising=False)
    assert cli.main(["bench", "--quick", "--repeats", "2", "-h"]) == 3
    assert received == [(["--quick", "--repeats", "2", "-h"], "tgfr bench")]


def test_demo_smoke(tmp_path, capsys):
    """The README's command end to end on the smoke preset: data, all training steps, evaluation, report."""
    assert cli.main(["demo", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "total wall time" in printed and str(tmp_path / "roc.png") in printed

    table_rows = [line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| ")]
    document = json.loads((tmp_path / "report.json").read_text())
    for mode in ("image", "flf", "tgfr"):
        levels = [row["level"] for row in document["results"] if row["mode"] == mode]
        assert levels == list(QUALITY_LEVELS)
    for row in document["results"]:
        assert 0.0 <= row["eer"] <= 1.0 and 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["rank1"] <= 1.0
        for far, tar in row["tar_at_far"].items():
            resolved = row["num_impostor_pairs"] >= min_impostors_for_far(float(far))
            assert (tar is not None) == resolved
    assert len(table_rows) == 1 + 3 * len(QUALITY_LEVELS)  # header and one row per mode and level
    assert all(f"| {level} |" in "".join(table_rows) for level in QUALITY_LEVELS)
    assert (tmp_path / "roc.png").stat().st_size > 10_000
    assert (tmp_path / "attention.png").stat().st_size > 10_000
