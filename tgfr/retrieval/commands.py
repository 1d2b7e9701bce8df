"""What ``tgfr xmodal train``, ``tgfr xmodal eval`` and ``tgfr retrieve`` do (the CLI parses, this runs)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .evaluation import evaluate_model, format_table
from .index import draw_grid
from .search import load
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
             skip_bad: bool = False, log=print) -> list[tuple[str, str, float]]:
    """Rank the gallery for one query; returns ``[(identity, name, score)]`` best first and draws ``out``.
    ``match`` (the identity or photo name of the correct answer) must be in the gallery; ``skip_bad``
    leaves out gallery photos that do not decode."""
    retriever = load(run_dir, gallery, skip_bad)
    query_image = retriever.query_pixels(image) if image is not None else None
    index = retriever.index
    log(f"gallery: {len(index.names)} faces, index {retriever.index_path} "
        f"({'reused' if retriever.index_reused else 'built and saved'})")
    if retriever.skipped:
        log(f"skipped {len(retriever.skipped)} photo(s) that do not decode: {', '.join(retriever.skipped[:5])}"
            + (", ..." if len(retriever.skipped) > 5 else ""))
    if match is not None and match not in index.identities and match not in index.names:
        raise ValueError(f"--match {match!r} is neither an identity nor a photo name of the gallery (such as "
                         f"{index.identities[0]!r} or {index.names[0]!r})")
    matches = retriever.search(text, query_image, top_k)
    if out is not None:
        draw_grid(text, query_image, index, [m.index for m in matches], [m.score for m in matches], match, out)
    return [(m.identity, m.name, m.score) for m in matches]
