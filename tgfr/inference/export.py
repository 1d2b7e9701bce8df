"""A shareable model directory, in the layout Hugging Face users know, with no pickle anywhere.

::

    DIR/
      model.safetensors   the weights (safetensors; without the caption encoder's own, see below)
      config.json         architecture, vocabulary, modes, preprocessing, where the weights come from
      thresholds.json     verification thresholds (FAR = 1e-3 at normal quality), when the run has them
      README.md           the model card: training data, evaluation table, how it was made, how to use it
      text_encoder/       a Hugging Face caption encoder (e.g. MiniLM), fine-tuned: its config, weights
                          and tokenizer as ``save_pretrained`` writes them (absent for the BiLSTM)

``tgfr.load(DIR)`` builds the model from ``config.json`` and reads the weights with safetensors;
it reads no training checkpoint and unpickles nothing.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

from ..atomic import write_text
from ..evaluation.thresholds import THRESHOLDS_FILE, read_thresholds, write_thresholds

FORMAT = "tgfr-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
TEXT_ENCODER_DIR = "text_encoder"
TEXT_ENCODER_PREFIX = "text_encoder.model."  # state-dict keys of a Hugging Face caption encoder's weights
SPLIT_FILE = "split.json"


def is_export(path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _evaluation_table(report_json) -> str | None:
    """The Markdown table of the evaluation report beside ``report_json`` (report.md), if it is still there."""
    report = Path(report_json).with_suffix(".md")
    if not report.is_file():
        return None
    lines = [line for line in report.read_text().splitlines() if line.startswith("|")]
    return "\n".join(lines) or None


def run_provenance(state: dict, checkpoint: Path, digest: str, calibration: Path | None) -> dict:
    """Where a run's weights come from: the run, its training config, data and evaluation table."""
    run = checkpoint.parent
    split = json.loads((run / SPLIT_FILE).read_text()) if (run / SPLIT_FILE).is_file() else {}
    report = read_thresholds(calibration).get("report") if calibration is not None else None
    config = state["config"]
    data = {"dataset": config["dataset"], "data_root": split.get("data_root"), "split_rule": split.get("rule"),
            "train_photos": split.get("num_train"), "test_photos": split.get("num_test")}
    if config["dataset"] == "synthetic":
        data["synthetic"] = config["data"]
    return {"run": str(run.resolve()), "checkpoint_sha256": digest, "data": data, "training": config,
            "evaluation": _evaluation_table(report) if report else None}


def _model_card(config: dict, thresholds: dict, command: str) -> str:
    model, provenance = config["model"], config["provenance"]
    data = provenance["data"]
    described = "a Hugging Face model (in text_encoder/)" if model["text_encoder"] == TEXT_ENCODER_DIR else \
        f"a BiLSTM over a {len(config['vocabulary'] or [])}-word vocabulary"
    threshold_rows = "\n".join(f"| {mode} | {'n/a' if value is None else f'{value:.4f}'} |"
                               for mode, value in thresholds.items())
    trained_on = f"the {data['dataset']} dataset" if data["dataset"] != "synthetic" else \
        "the embedded synthetic face-caption set, whose people do not exist"
    counts = [f"{data[f'{side}_photos']} {side}" for side in ("train", "test") if data.get(f"{side}_photos")]
    if counts:
        trained_on += f": {' and '.join(counts)} photos"
    if data.get("split_rule"):
        trained_on += f"; split: {data['split_rule']}"
    lines = [
        "---", "library_name: tgfr", "tags:", "- face-recognition", "- text-guided-face-recognition", "---", "",
        "# TGFR model", "",
        "Text-guided face recognition (TGFR; Hasan, Sami & Nasrabadi, WACV 2024): a face photo and a description "
        "of the person fused into one embedding for 1:1 verification and 1:N identification.", "",
        "## Use", "",
        "```python", "import tgfr", "", 'model = tgfr.load("path/to/this/directory")',
        'model.verify("a.jpg", "b.jpg", caption_a="A young woman with ...", caption_b="...")',
        'model.identify("probe.jpg", "gallery/", caption="...", top_k=5)', "```", "",
        "or `tgfr verify A.jpg B.jpg --model DIR`, `tgfr identify`, `tgfr embed`, `tgfr serve --model DIR`.", "",
        "## Model", "",
        f"- face encoder: iResNet ({model['image_variant']}, layers {model['image_layers']}, width "
        f"{model['image_width']}), {model['image_size']}x{model['image_size']} RGB input: the centred square "
        f"crop of a photo, resized, scaled to [-1, 1]",
        f"- caption encoder: {described}, at most {model['max_words']} words",
        f"- embedding: {model['embedding_size']} dimensions, unit length, compared by cosine",
        f"- modes: {', '.join(config['modes'])}", "",
        "## Verification thresholds", "",
        "A pair is the same person when its cosine score reaches its mode's threshold (`thresholds.json`): "
        "`tgfr eval` sets it where the run's test pairs at normal quality reach a false accept rate of 1e-3 "
        "(n/a: too few test pairs resolve that rate); `model.set_threshold` changes it.", "",
        "| mode | threshold |", "|---|---:|", threshold_rows, "",
        "## Training data", "",
        f"Trained on {trained_on}.", "",
        "## Evaluation", "",
        provenance["evaluation"] or "No evaluation report was found for this run (`tgfr eval` writes one).", "",
        "## How it was made", "",
        f"`{command}` on {datetime.date.today().isoformat()}, from the run `{provenance['run']}` (checkpoint "
        f"SHA-256 `{provenance['checkpoint_sha256']}`), trained with this configuration (`tgfr train --config`):",
        "", "```yaml", _yaml(provenance["training"]).rstrip(), "```", "",
    ]
    return "\n".join(lines)


def _yaml(values: dict) -> str:
    import yaml

    return yaml.safe_dump(values, sort_keys=False)


def export(recognizer, out, command: str = "tgfr.inference.export(...)") -> Path:
    """Write ``recognizer`` (a loaded run or export) as a model directory ``out`` (new or empty)."""
    from safetensors.torch import save_file

    from ..models.text import HFTextEncoder

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty directory: choose a new output directory")
    model = recognizer.model
    hugging_face = isinstance(model.text_encoder, HFTextEncoder)
    out.mkdir(parents=True, exist_ok=True)
    if hugging_face:  # self-contained: the fine-tuned encoder and its tokenizer, in their own format
        model.text_encoder.model.save_pretrained(out / TEXT_ENCODER_DIR)
        model.text_encoder.tokenizer.save_pretrained(out / TEXT_ENCODER_DIR)
    weights = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()
               if not (hugging_face and key.startswith(TEXT_ENCODER_PREFIX))}
    save_file(weights, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    model_config = dataclasses.asdict(model.config)
    model_config.update(image_weights=None, text_encoder=TEXT_ENCODER_DIR if hugging_face else "bilstm")
    vocabulary = model.vocabulary
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model_config,
              "vocabulary": vocabulary.words[2:] if vocabulary is not None else None,
              "modes": list(recognizer.modes),
              "preprocessing": {"image_size": model_config["image_size"], "crop": "centred square",
                                "resize": "bilinear", "range": [-1.0, 1.0], "channels": "RGB"},
              "provenance": recognizer.provenance}
    write_text(out / CONFIG_FILE, json.dumps(config, indent=1) + "\n")
    write_thresholds(out / THRESHOLDS_FILE, recognizer.thresholds, recognizer.provenance["checkpoint_sha256"])
    write_text(out / CARD_FILE, _model_card(config, recognizer.thresholds, command))
    return out


def load_export(directory, device="auto"):
    """The :class:`tgfr.inference.FaceRecognizer` of an exported model directory."""
    from safetensors.torch import load_file

    from ..evaluation.thresholds import file_sha256
    from ..models.text import Vocabulary
    from ..models.tgfr import ModelConfig, TGFRModel
    from .api import FaceRecognizer, resolve_device

    directory = Path(directory)
    damaged = f"{directory} is a damaged exported model"
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{damaged}: {CONFIG_FILE} is not readable JSON ({error})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory / CONFIG_FILE} does not describe a {FORMAT} (version {FORMAT_VERSION}) model")
    missing = [key for key in ("model", "vocabulary", "modes", "provenance") if key not in config]
    if missing:
        raise ValueError(f"{damaged}: {CONFIG_FILE} lacks {', '.join(missing)}")
    try:
        model_config = ModelConfig(**config["model"])
    except TypeError as error:
        raise ValueError(f"{directory / CONFIG_FILE}: unknown model settings: {error}") from error
    hugging_face = model_config.text_encoder == TEXT_ENCODER_DIR
    if hugging_face:
        model_config.text_encoder = str(directory / TEXT_ENCODER_DIR)
    vocabulary = Vocabulary(config["vocabulary"]) if config["vocabulary"] is not None else None
    model = TGFRModel(model_config, vocabulary)
    try:
        weights = load_file(str(directory / WEIGHTS_FILE))
    except Exception:  # noqa: BLE001 - safetensors raises its own error types for files it cannot read
        raise ValueError(f"{damaged}: {WEIGHTS_FILE} does not load as safetensors") from None
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # a tensor of another shape
        raise ValueError(f"{directory / WEIGHTS_FILE} does not fit {directory / CONFIG_FILE}: "
                         f"{str(error).splitlines()[-1].strip()[:200]}") from None
    missing = [key for key in missing if not (hugging_face and key.startswith(TEXT_ENCODER_PREFIX))]
    if missing or unexpected:
        raise ValueError(f"{directory / WEIGHTS_FILE} does not fit {directory / CONFIG_FILE}: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")
    thresholds_file = directory / THRESHOLDS_FILE
    thresholds = read_thresholds(thresholds_file)["thresholds"] if thresholds_file.is_file() else {}
    return FaceRecognizer(model.to(resolve_device(device)), config["modes"], thresholds, directory,
                          file_sha256(directory / WEIGHTS_FILE), config["provenance"])
