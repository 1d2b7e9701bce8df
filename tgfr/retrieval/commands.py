"""What ``tgfr xmodal train``, ``tgfr xmodal eval`` and ``tgfr retrieve`` do (the CLI parses, this runs)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .evaluation import evaluate_model, format_table
from .index import draw_grid, gallery_index, load_image
from .train import load_run, prepare


def evaluate_run(run_dir, out=None) -> tuple[str, dict[str, Path]]:
    """The R@K table of a run on its unseen test people: markdown text and the files written."""
    run_dir = Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent
    config, model, state = load_run(run_dir)
    started = time.perf_counter()
    splits, text = prepare(config, run_dir)
    results = evaluate_model(model, splits["test"], text, config.backend)
    test = splits["test"]
    header = (f"X-Modal retrieval on {len(set(test.faces.identities.tolist()))} unseen people "
              f"({len(test.faces.identities)} text queries, {len(test.changes.identities)} composed queries; "
              f"face encoder {config.face_encoder}, negatives {config.negatives}, "
              f"{state['progress']['epochs_done']}/{config.epochs} epochs)")
    table = f"{header}\n\n{format_table(results)}\n"
    out = Path(out) if out else run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "xmodal_eval.md", "json": out / "xmodal_eval.json"}
    paths["markdown"].write_text(table)
    paths["json"].write_text(json.dumps({"config": state["config"], "epochs_done": state["progress"]["epochs_done"],
                                         "seconds": round(time.perf_counter() - started, 1), "results": results},
                                        indent=1))
    return table, paths


def retrieve(run_dir, text: str, image=None, gallery=None, top_k: int = 10, out=None, match=None,
             log=print) -> list[tuple[str, str, float]]:
    """Rank the gallery for one query; returns ``[(identity, name, score)]`` best first and draws ``out``."""
    from .text import SentenceEncoder

    if not text or not text.strip():
        raise ValueError("--text must contain at least one word")
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    run_dir = Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent
    config, model, _ = load_run(run_dir)
    query_image = load_image(image, config.image_size) if image is not None else None
    index, index_path, reused = gallery_index(run_dir, model, config, gallery, lambda: prepare(config, run_dir)[0])
    log(f"gallery: {len(index.names)} faces, index {index_path} ({'reused' if reused else 'built and saved'})")
    if top_k > len(index.names):
        raise ValueError(f"--top-k {top_k} is larger than the gallery ({len(index.names)} faces)")
    sentence = SentenceEncoder(config.text_encoder, config.max_tokens)([text]).sentences
    with torch.no_grad():
        if query_image is None:
            query = model.embed_texts(sentence)
        else:
            from .data import images_to_tensor

            query = model.compose(model.embed_faces(images_to_tensor(query_image[None])), sentence)
        scores = (query @ index.embeddings.T)[0]
    best = torch.topk(scores, top_k)
    ranked = best.indices.tolist()
    results = [(index.identities[i], index.names[i], float(scores[i])) for i in ranked]
    if out is not None:
        draw_grid(text, query_image, index, ranked, [r[2] for r in results], match, out)
    return results
