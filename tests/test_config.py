"""The config loader of every command, and every declared value checked: the bad-value cases are generated
from the configs' own declarations (each closed field one value outside its set, each ranged field one value
outside its range)."""
from __future__ import annotations

import dataclasses
import json
import types
from typing import Union, get_args, get_origin, get_type_hints  # noqa: UP035

import pytest

from tgfr import config as configs
from tgfr.config import ConfigError, allowed_range, allowed_values
from tgfr.retrieval.config import XModalConfig
from tgfr.study.presets import StudyConfig
from tgfr.training.config import TrainConfig

# each command's config with a preset its cases start from
CONFIGS = [(TrainConfig, "smoke"), (XModalConfig, "tiny"), (StudyConfig, "tiny")]


def _declared_fields(cls, where=""):
    """(dotted key, field, annotated type) of every setting of ``cls``, nested configs walked."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _declared_fields(hints[f.name], f"{where}{f.name}.")
        else:
            yield where + f.name, f, hints[f.name]


def _scalar_type(annotation):
    """The type of a field's values (of its items, for a list or tuple): int, float or str."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(t for t in get_args(annotation) if t is not type(None))
    if get_origin(annotation) in (list, tuple):
        return get_args(annotation)[0], True
    return annotation, False


def _one_value(value, annotation, config_value):
    """``value`` as the field holds it: the only item of a list, the first of a fixed-length tuple."""
    kind, several = _scalar_type(annotation)
    value = kind(value)
    if not several:
        return value
    if get_origin(annotation) is tuple:
        return [value, *list(config_value)[1:]]
    return [value]


def _out_of_range(bounds: dict):
    if "ge" in bounds:
        return bounds["ge"] - 1
    if "gt" in bounds:
        return bounds["gt"]
    if "le" in bounds:
        return bounds["le"] + 1
    return bounds["lt"]


def _cases(kind: str):
    for cls, preset in CONFIGS:
        default = configs.load(cls, preset)
        for key, f, annotation in _declared_fields(cls):
            current = default
            for part in key.split("."):
                current = getattr(current, part)
            if kind == "choices" and f.metadata.get("choices") is not None:
                yield pytest.param(cls, preset, key, _one_value("__no_such_choice__", annotation, current),
                                   allowed_values(f), id=f"{cls.__name__}.{key}-choice")
            if kind == "range" and f.metadata.get("bounds"):
                bad = _one_value(_out_of_range(f.metadata["bounds"]), annotation, current)
                yield pytest.param(cls, preset, key, bad, allowed_range(f), id=f"{cls.__name__}.{key}-range")


@pytest.mark.parametrize("cls, preset, key, bad, allowed", [*_cases("choices"), *_cases("range")])
def test_every_declared_field_refuses_a_value_outside_its_set_or_range(cls, preset, key, bad, allowed):
    with pytest.raises(ConfigError) as error:
        configs.load(cls, preset, [f"{key}={json.dumps(bad)}"])
    message = str(error.value)
    assert f"config key {key!r}" in message and allowed in message and repr(bad) in message
    assert "\n" not in message


def test_the_cases_cover_every_kind_of_setting():
    """The generated cases reach the fields the commands are known to need checked (a guard against a walk
    that silently finds nothing)."""
    closed = {values[2] for values in (p.values for p in _cases("choices"))}
    ranged = {values[2] for values in (p.values for p in _cases("range"))}
    assert {"align.optimizer", "align.objective", "align.imcl", "align.scaling", "model.text_encoder",
            "model.fusions", "fusion.modes", "align.qualities", "dataset", "device", "ops_backend",
            "distributed.backend", "model.imim_norm", "model.fcfm_face_feature", "negatives", "face_encoder",
            "backend", "training.align.optimizer"} <= closed
    assert {"align.lr", "align.text_lr", "image.epochs", "image.batch_size", "data.split_fractions",
            "align.weights.id", "epochs", "grade_starts", "seeds", "model.dropout"} <= ranged


def test_a_zero_caption_learning_rate_is_allowed_and_a_zero_learning_rate_is_not():
    assert configs.load(TrainConfig, "smoke", ["align.text_lr=0"]).align.text_lr == 0.0
    with pytest.raises(ConfigError, match=r"config key 'align.lr' must be > 0; got 0.0"):
        configs.load(TrainConfig, "smoke", ["align.lr=0"])


@pytest.mark.parametrize("cls, overrides, message", [
    (TrainConfig, ["dataset=face2text"], "config key 'data_root' must give the directory of dataset 'face2text'"),
    (TrainConfig, ["model.fusions=[flf]"], "config key 'fusion.modes' must be among the model's fusions"),
    (TrainConfig, ["model.image_size=40"], "config key 'model.image_size' must be divisible by 16"),
    (TrainConfig, ["model.fusion_heads=3"], "config key 'model.fusion_heads' must divide dim"),
    (TrainConfig, ["align.imcl=views", "align.batch_size=5"], "config key 'align.batch_size' must be even"),
    (TrainConfig, ["data.split_fractions=[0.5, 0.5, 0.5]"], "config key 'data.split_fractions' must sum to 1"),
    (TrainConfig, ["fusion.qualities=[]"], "config key 'fusion.qualities' must name at least one view"),
    (XModalConfig, ["grade_starts=[0.0, 0.5]"], "config key 'grade_starts' must give 3 fractions"),
    (XModalConfig, ["dataset=celeba-dialog"], "config key 'data_root' must give the directory"),
    (StudyConfig, ["training.model.image_size=24"], "config key 'training.model.image_size' must be divisible"),
])
def test_rules_between_fields_name_the_key(cls, overrides, message):
    with pytest.raises(ConfigError, match=message):
        configs.load(cls, None, overrides)


@pytest.mark.parametrize("override, message", [
    ("epochs=abc", "config key 'epochs' must be int; got 'abc'"),
    ("lr=true", "config key 'lr' must be float; got True"),
    ("grade_starts=0.5", "config key 'grade_starts' must be list; got 0.5"),
    ("epochz=1", "unknown config key 'epochz'; known keys here: dataset, data_root"),
    ("epochs", "an override must look like key=value"),
    ("epochs=[1", "config key 'epochs' is not valid YAML"),
])
def test_malformed_overrides_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        configs.load(XModalConfig, "tiny", [override])


def test_presets_are_a_base_preset_and_changes():
    # the demo preset is the defaults changed; a study preset's training is the paper preset changed
    demo, paper = configs.load(TrainConfig, "demo"), configs.load(TrainConfig, "paper")
    assert demo.model.image_size == 48 and demo.model.imim_norm == TrainConfig().model.imim_norm
    quick = configs.load(StudyConfig, "quick")
    assert quick.training.model.imim_norm == paper.model.imim_norm == "batch"
    assert quick.training.model.image_size == 32 and quick.training.align.optimizer == "adamw"
    # a nested preset named in an override starts that part again from the preset
    assert configs.load(StudyConfig, "quick", ["training.preset=smoke"]).training == configs.load(TrainConfig, "smoke")


def test_a_yaml_file_names_its_preset_and_round_trips(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: smoke\nseed: 3\nalign:\n  lr: 2e-3\n  weights:\n    cicl: 0.5\n")
    config = configs.load(TrainConfig, path, ["seed=4"])
    assert (config.seed, config.align.lr, config.align.weights.cicl) == (4, 0.002, 0.5)
    configs.save(config, tmp_path / "config.yaml")
    assert configs.load(TrainConfig, tmp_path / "config.yaml") == config
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        configs.load(TrainConfig, tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="must be a preset .* or a YAML file"):
        configs.load(TrainConfig, "no-such-preset")
    with pytest.raises(ConfigError, match="config key 'preset' must name a preset"):
        configs.load(TrainConfig, {"preset": "nope"})


def test_a_preset_in_a_circle_is_an_error():
    @dataclasses.dataclass
    class Looping:
        value: int = 0

    Looping.presets = {"a": {"preset": "b"}, "b": {"preset": "a"}}
    with pytest.raises(ConfigError, match="presets in a circle: a -> b -> a"):
        configs.load(Looping, "a")


def test_differences_and_merge():
    a = {"x": 1, "y": {"z": [1, 2], "w": 0}}
    assert configs.differences(a, configs.merge(a, {"y": {"w": 1}, "v": 2})) == ["y.w", "v"]
    assert configs.merge({"y": {"z": 1}}, {"y": {"w": 2}}) == {"y": {"z": 1, "w": 2}}
