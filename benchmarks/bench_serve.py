"""Per-request latency of the ``tgfr serve`` web app: verify, identify and search, each answered by a real
server on loopback and timed at the client (upload, preprocessing, model, JSON), one request at a time.
Writes SERVE_RESULTS.md and SERVE_RESULTS.json beside this file (or into --out).

    python benchmarks/bench_serve.py --model RUN --xmodal XRUN --gallery DIR [--requests 30]

The gallery defaults to the model run's own test photos (written as a folder with captions.jsonl).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch

import tgfr
from tgfr.inference.gallery import write_gallery
from tgfr.inference.serve import create_app, open_gallery, serving
from tgfr.retrieval import load as load_retriever


def test_gallery(run: Path, root: Path) -> Path:
    from tgfr.training import config_from_dict, read_checkpoint
    from tgfr.training.data import load_test_split

    return write_gallery(load_test_split(config_from_dict(read_checkpoint(run)["config"]), run).records, root)


def timed(session: httpx.Client, url: str, requests: int, warmup: int, **request) -> list[float]:
    """Milliseconds of each of ``requests`` sequential POSTs (after ``warmup`` untimed ones)."""
    times = []
    for n in range(warmup + requests):
        started = time.perf_counter()
        response = session.post(url, **request)
        elapsed = 1000 * (time.perf_counter() - started)
        response.raise_for_status()
        if n >= warmup:
            times.append(elapsed)
    return times


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(ordered), 1), "p10_ms": round(ordered[len(ordered) // 10], 1),
            "p90_ms": round(ordered[(9 * len(ordered)) // 10], 1), "requests": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="TGFR run or exported model")
    parser.add_argument("--xmodal", type=Path, required=True, help="X-Modal run")
    parser.add_argument("--gallery", type=Path, help="gallery folder (default: the model run's test photos)")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--note", default="", help="what the models are (recorded with the results)")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        gallery_dir = args.gallery or test_gallery(args.model, Path(scratch) / "gallery")
        recognizer = tgfr.load(args.model)
        gallery, error = open_gallery(recognizer, gallery_dir)
        if error:
            raise SystemExit(error)
        retriever = load_retriever(args.xmodal, gallery_dir)
        photos = sorted(gallery_dir.glob("*/*.png"))[:2]
        captions = [json.loads(line)["caption"] for line in (gallery_dir / "captions.jsonl").read_text().splitlines()]
        uploads = [(p.name, p.read_bytes(), "image/png") for p in photos]
        cases = {
            "verify (photos only)": ("/api/verify", {"files": {"image_a": uploads[0], "image_b": uploads[1]}}),
            "verify (photos + descriptions, with attention maps)": (
                "/api/verify", {"files": {"image_a": uploads[0], "image_b": uploads[1]},
                                "data": {"caption_a": captions[0], "caption_b": captions[1]}}),
            "identify (photo + description, top 5)": (
                "/api/identify", {"files": {"probe": uploads[0]}, "data": {"caption": captions[0], "top_k": "5"}}),
            "search (description, top 10)": ("/api/search", {"data": {"text": captions[0], "top_k": "10"}}),
            "search (photo + change, top 10)": (
                "/api/search", {"files": {"image": uploads[0]}, "data": {"text": "now has a beard", "top_k": "10"}}),
        }
        results = {}
        with serving(create_app(recognizer, retriever, gallery)) as url, httpx.Client(timeout=300) as session:
            retriever.index  # noqa: B018  (built before timing, as tgfr serve does at start)
            for name, (endpoint, request) in cases.items():
                results[name] = summary(timed(session, url + endpoint, args.requests, args.warmup, **request))
        faces = len(gallery)
    document = {
        "note": args.note, "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "model": str(args.model), "image_size": recognizer.image_size, "text_encoder":
            recognizer.model.config.text_encoder, "xmodal": str(args.xmodal), "gallery_faces": faces,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "SERVE_RESULTS.json").write_text(json.dumps(document, indent=1) + "\n")
    lines = [f"# tgfr serve: latency per request ({args.requests} sequential requests per case, loopback)", "",
             "| request | median (ms) | p10 (ms) | p90 (ms) |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['median_ms']} | {r['p10_ms']} | {r['p90_ms']} |" for name, r in results.items()]
    lines += ["", *(f"- {key}: {value}" for key, value in document.items() if key != "results")]
    (args.out / "SERVE_RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
