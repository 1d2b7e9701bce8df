"""X-Modal on the embedded data: what each training change buys, the negative grades, the face encoders.

Every row is one ``tgfr xmodal train --preset P --out DIR key=value ... threads=1`` (``--threads N``: N) followed by
``tgfr xmodal eval --model DIR``, run as child processes; each row records the children's CPU time
(user + sys, from ``os.wait4``), the budget proxy on a machine shared with other jobs: runs are
deterministic for a seed, so only the time depends on the load. Rows of one data seed share the rendered
faces, change pairs and the frozen sentence features: the first run of a seed leaves them in ``WORK/cache`` and later
runs start with them linked into their run directory, so their CPU time is training and evaluation alone;
a row that had to render or encode any of them (its seed's first run, or one with ``--cold``) is marked cold:
its CPU time is what a user's first run costs.

    python benchmarks/xmodal_study.py run [--preset quick] [--cold] [--threads 1] NAME key=value ...   # one row
    python benchmarks/xmodal_study.py part PART [--jobs 2]       # PART: one of PARTS, e.g. seeds, grades, 'small seeds'
    python benchmarks/xmodal_study.py probe NAME ...                                      # attribute probes
    python benchmarks/xmodal_study.py supervised ATTRIBUTE ...                # the face encoder on one attribute
    python benchmarks/xmodal_study.py report                                              # tables only

Results accumulate in ``benchmarks/XMODAL_RESULTS.json`` (a finished row is not run again) and the tables
in ``benchmarks/XMODAL_RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tgfr import config as configs
from tgfr.atomic import write_text
from tgfr.retrieval.config import XModalConfig, load_config
from tgfr.retrieval.loss import NEGATIVE_SETTINGS

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "XMODAL_RESULTS.json"
REPORT = HERE / "XMODAL_RESULTS.md"
TEXT, COMPOSED = "text -> face", "text + image -> face"
SEEDS = (0, 1, 2)

# The data and length of the first two quick presets (300 people, 180 of them to train on, 2 change pairs each,
# 60 epochs): the rows that ran on them name these settings, so that each row's definition is what it ran.
SMALL_DATA = ["num_identities=300", "split_fractions=[0.6,0.1,0.3]", "train_pairs_per_identity=2", "epochs=60",
              "attribute_weight=0"]
# The path from the first quick preset to the present one, one change per row, seed 0: each row adds its
# change to the previous row's settings (the first rows at the first preset's 16 epochs); the last row is the
# quick preset, seed 0.
CHANGES = [
    ("first quick preset", [*SMALL_DATA, "epochs=16", "negatives=hard", "before_negative=false",
                               "text_head=sentence", "text_views=1"]),
    ("negatives=none", ["negatives=none"]),
    ("text_head=tokens", ["text_head=tokens"]),
    ("text_views=4", ["text_views=4"]),
    ("before_negative=true at 16 epochs", ["before_negative=true"]),
    ("epochs=60 (second quick preset)", ["epochs=60"]),
    ("1000 people (910 to train on), 15 epochs", ["num_identities=1000", "split_fractions=[0.91,0.0,0.09]",
                                                  "epochs=15"]),
    ("train_pairs_per_identity=4", ["train_pairs_per_identity=4"]),
    ("attribute read-outs, weight 10 (15 epochs)", ["attribute_weight=10"]),
    ("epochs=25 (quick preset)", ["epochs=25"]),
]


def _variant_parts(part: str, prefix: str, settings: list[str]) -> dict[str, list[tuple[str, list[str]]]]:
    """The planned parts of one variant of the quick preset (``settings`` on top of it), their rows' names
    starting with ``prefix``: its seeds, its negative grades over the seeds and ViT-S at seed 0."""
    seeds = prefix or "quick "  # the present preset's seeds are "quick seed S"
    return {
        f"{part}seeds": [(f"{seeds}seed {s}", [*settings, f"seed={s}"]) for s in SEEDS],
        f"{part}grades": [(f"{prefix}negatives={n} seed {s}", [*settings, f"negatives={n}", f"seed={s}"])
                          for n in NEGATIVE_SETTINGS for s in SEEDS],
        f"{part}encoders": [(f"{prefix}face_encoder=vit_s seed 0", [*settings, "face_encoder=vit_s", "seed=0"])],
    }


PRESET_ROWS = {
    **_variant_parts("", "", []),
    # the quick preset at its first length with the read-outs (15 epochs), and without them (the third quick preset)
    **_variant_parts("15-epoch ", "15 epochs ", ["epochs=15"]),
    "15-epoch no read-outs": [(f"15 epochs attribute_weight=0 seed {s}", ["epochs=15", "attribute_weight=0", f"seed={s}"])
                              for s in SEEDS],
    # the second quick preset over seeds, and its ablations
    **_variant_parts("small ", "second quick preset ", SMALL_DATA),
}
PRESET_ROWS["small encoders"].append(("second quick preset face_encoder=resnet50 epochs=12 seed 0",
                                      [*SMALL_DATA, "face_encoder=resnet50", "epochs=12", "seed=0"]))


PARTS = ("changes", *PRESET_ROWS, "full")


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_row(name: str, row: dict) -> None:
    results = load_results()  # reread: parallel rows finish in any order
    results[name] = row
    write_text(RESULTS, json.dumps(results, indent=1) + "\n")  # whole or not at all: another process may read it


def _child(argv: list[str], log) -> float:
    """Run ``argv``; its CPU seconds (user + sys of it and its children)."""
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {process.returncode}); see {log.name}")
    return usage.ru_utime + usage.ru_stime


def run_row(name: str, preset: str, overrides: list[str], work: Path, cold: bool = False, threads: int = 1) -> dict:
    if name in load_results():
        return load_results()[name]
    config = configs.dump(load_config(preset, [*overrides, f"threads={threads}"]))
    # a row written before a config key existed ran with that key's default
    defaults = configs.dump(XModalConfig())
    same = [row for row in load_results().values()
            if "config" in row and {**defaults, **row["config"]} == config and not cold]
    if same:  # the same run under another name (the last change row is seed 0 of the preset)
        save_row(name, same[0])
        return same[0]
    out = work / "runs" / name.replace(" ", "_").replace("=", "-")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    cached = set() if cold else {path.name for path in cache.iterdir()}
    for file in cached:
        os.link(cache / file, out / file)
    tgfr = [sys.executable, "-m", "tgfr", "xmodal"]
    started = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        train_cpu = _child([*tgfr, "train", "--preset", preset, "--out", str(out), *overrides, f"threads={threads}"], log)
        eval_cpu = _child([*tgfr, "eval", "--model", str(out)], log)
    data = [*out.glob("tgfr_synthetic_*.npz"), *out.glob("tgfr_changes_*.pt"), *out.glob("text_features_*.pt")]
    made = [path for path in data if path.name not in cached]  # every cached file is linked in, used or not
    for path in made:
        if not (cache / path.name).exists():
            os.link(path, cache / path.name)
    cold = bool(made)  # this run rendered faces or pairs, or encoded captions
    evaluation = json.loads((out / "eval" / "xmodal_eval.json").read_text())
    row = {"preset": preset, "overrides": overrides, "cold": cold, "cpu_train_s": round(train_cpu, 1),
           "cpu_eval_s": round(eval_cpu, 1), "wall_s": round(time.perf_counter() - started, 1),
           "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} cores", "config": evaluation["config"], "results": evaluation["results"]}
    save_row(name, row)
    print(f"{name}: {summary(row)}", flush=True)
    return row


def summary(row: dict) -> str:
    text, composed = row["results"][TEXT], row["results"][COMPOSED]
    return (f"text R@1/R@10/mAP {100 * text['X-Modal']['R@1']:.1f}/{100 * text['X-Modal']['R@10']:.1f}/"
            f"{100 * text['X-Modal']['mAP']:.1f}; composed R@1 {100 * composed['X-Modal']['R@1']:.1f} "
            f"(image only {100 * composed['image only']['R@1']:.1f}), after>before "
            f"{100 * composed['X-Modal']['after above before']:.1f}; cpu train {row['cpu_train_s']} s")


def part_rows(part: str) -> list[tuple[str, str, list[str]]]:
    if part == "changes":
        rows, settings = [], []
        for label, change in CHANGES:
            settings = [s for s in settings if s.split("=")[0] not in {c.split("=")[0] for c in change}] + change
            rows.append((label, "quick", list(settings)))
        return rows
    if part == "full":
        return [("full preset seed 0", "full", [])]
    return [(name, "quick", overrides) for name, overrides in PRESET_ROWS[part]]


# ---------------------------------------------------------------- probes


def probe(name: str, work: Path) -> dict:
    """Where text -> face stops: how well each described attribute can be read, by a logistic regression
    fitted on the training people and scored on the test people, from (a) the trained face embeddings
    of row ``name`` and (b) the frozen sentence vectors of the photos' first captions (stated values only).
    Beside each, the majority-class accuracy of the test people."""
    from collections import Counter

    from sklearn.linear_model import LogisticRegression

    from tgfr.retrieval.data import DESCRIBED
    from tgfr.retrieval.evaluation import embed_images
    from tgfr.retrieval.train import load_run, prepare

    run = work / "runs" / name.replace(" ", "_").replace("=", "-")
    config, model, _ = load_run(run)
    splits, text = prepare(config, run)
    faces = {s: embed_images(model, splits[s].faces.images)[0].numpy() for s in ("train", "test")}
    sentences = {s: text.batch([c[0] for c in splits[s].faces.captions]).sentences.numpy() for s in ("train", "test")}
    table = {}
    for attribute in DESCRIBED:
        truth = {s: np.array([str(a[attribute]) for a in splits[s].faces.attributes]) for s in ("train", "test")}
        stated = {s: [i for i, st in enumerate(splits[s].faces.statements) if attribute in st] for s in truth}
        said = {s: np.array([str(splits[s].faces.statements[i][attribute]) for i in stated[s]]) for s in truth}
        entry = {"majority": max(Counter(truth["test"]).values()) / len(truth["test"])}
        if len(set(truth["train"])) > 1:
            entry["face"] = LogisticRegression(max_iter=2000).fit(faces["train"], truth["train"]).score(
                faces["test"], truth["test"])
        if len(set(said["train"])) > 1 and len(said["test"]):
            entry["stated share"] = len(stated["test"]) / len(truth["test"])
            entry["text"] = LogisticRegression(max_iter=2000).fit(sentences["train"][stated["train"]], said["train"]) \
                .score(sentences["test"][stated["test"]], said["test"])
        table[attribute] = entry
    row = load_results()[name]
    row["probe"] = table
    save_row(name, row)
    return table


def supervised(attribute: str, work: Path, steps: int = 300, batch: int = 128) -> dict:
    """Can the face encoder read ``attribute`` of unseen people at all? The quick preset's encoder (seed 0
    data) trained on that attribute alone: cross-entropy of a linear head, ``steps`` AdamW steps of ``batch``
    training photos at the preset's learning rate, one thread; accuracy on the test people's photos beside
    their majority class. Recorded under ``supervised ATTRIBUTE``."""
    import torch
    import torch.nn.functional as F

    from tgfr.retrieval.data import images_to_tensor
    from tgfr.retrieval.models import build_face_encoder
    from tgfr.retrieval.train import prepare

    config = load_config("quick", ["threads=1"])
    torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    splits, _ = prepare(config, cache)
    values = {s: [str(a[attribute]) for a in splits[s].faces.attributes] for s in ("train", "test")}
    classes = sorted(set(values["train"]))
    labels = {s: np.array([classes.index(v) for v in values[s]]) for s in values}
    encoder = build_face_encoder(config.face_encoder, config.image_size, config.face_width)
    head = torch.nn.Linear(encoder.global_size, len(classes))
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], config.lr,
                                  weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    started = time.process_time()
    for _ in range(steps):
        rows = rng.choice(len(labels["train"]), batch, replace=False)
        logits = head(encoder(images_to_tensor(splits["train"].faces.images[rows]))[0])
        loss = F.cross_entropy(logits, torch.as_tensor(labels["train"][rows]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    encoder.eval()
    with torch.no_grad():
        predicted = head(encoder(images_to_tensor(splits["test"].faces.images))[0]).argmax(1).numpy()
    row = {"attribute": attribute, "steps": steps, "batch": batch, "classes": classes,
           "test accuracy": float((predicted == labels["test"]).mean()),
           "test majority": float(np.bincount(labels["test"]).max() / len(labels["test"])),
           "final training loss": loss.item(), "cpu_s": round(time.process_time() - started, 1),
           "date": time.strftime("%Y-%m-%d")}
    save_row(f"supervised {attribute}", row)
    print(f"supervised {attribute}: test accuracy {100 * row['test accuracy']:.1f} % "
          f"(majority {100 * row['test majority']:.1f} %)", flush=True)
    return row


def _probe_table(names: list[str], results: dict) -> list[str]:
    attributes = list(results[names[0]]["probe"])
    header = "| attribute | test majority | stated in | frozen sentence → stated value | " + \
        " | ".join(f"face embedding ({n}) → true value" for n in names) + " |"
    lines = [header, "|---|" + "---:|" * (3 + len(names))]
    for attribute in attributes:
        first = results[names[0]]["probe"][attribute]
        cells = [_pct(first["majority"]), _pct(first["stated share"]) if "stated share" in first else "",
                 _pct(first["text"]) if "text" in first else ""]
        cells += [_pct(results[n]["probe"][attribute]["face"]) if "face" in results[n]["probe"][attribute] else ""
                  for n in names]
        lines.append(f"| {attribute} | " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------- report

ORACLE, CHANCE = "attribute oracle", "chance"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def gap_closed(row: dict, metric: str = "R@10") -> float:
    """The share of the way from chance to the attribute oracle that X-Modal's text -> face ``metric`` goes."""
    text = row["results"][TEXT]
    room = text[ORACLE][metric] - text[CHANCE][metric]
    return (text["X-Modal"][metric] - text[CHANCE][metric]) / room if room > 0 else float("nan")


def paired_interval(differences, confidence: float = 0.95) -> tuple[float, float]:
    """Mean of ``differences`` (one per seed) and the half-width of its Student-t interval."""
    from scipy.stats import t

    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        return float(d.mean()), float("nan")
    return float(d.mean()), float(t.ppf(0.5 + confidence / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))


#: (column, function of a row) of the per-run tables
COLUMNS = [
    ("text→face R@1", lambda r: r["results"][TEXT]["X-Modal"]["R@1"]),
    ("R@10", lambda r: r["results"][TEXT]["X-Modal"]["R@10"]),
    ("mAP", lambda r: r["results"][TEXT]["X-Modal"]["mAP"]),
    ("R@10 gap closed", gap_closed),
    ("text+image→face R@1", lambda r: r["results"][COMPOSED]["X-Modal"]["R@1"]),
    ("R@10", lambda r: r["results"][COMPOSED]["X-Modal"]["R@10"]),
    ("image only R@1", lambda r: r["results"][COMPOSED]["image only"]["R@1"]),
    ("after above before", lambda r: r["results"][COMPOSED]["X-Modal"]["after above before"]),
]


def _table(names: list[str], results: dict, deltas: bool = False) -> list[str]:
    header = "| run | " + " | ".join(c for c, _ in COLUMNS) + (" | Δ text R@10 | Δ after above before" if deltas else "") \
        + " | CPU s train / eval |"
    lines = [header, "|---|" + "---:|" * (len(COLUMNS) + 1 + 2 * deltas)]
    previous = None
    for name in names:
        row = results[name]
        cells = [_pct(f(row)) for _, f in COLUMNS]
        if deltas:
            cells += ["" if previous is None else f"{100 * (COLUMNS[i][1](row) - COLUMNS[i][1](previous)):+.1f}"
                      for i in (1, 7)]
        cold = " (cold)" if row.get("cold") else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['cpu_train_s']:.0f} / {row['cpu_eval_s']:.0f}{cold} |")
        previous = row
    return lines


def _bounds(row: dict) -> list[str]:
    text, composed = row["results"][TEXT], row["results"][COMPOSED]
    methods = [(TEXT, m) for m in (CHANCE, ORACLE, "attribute oracle, ties at random")] + \
        [(COMPOSED, m) for m in (CHANCE, "oracle (person + change)")]
    lines = ["| query | bound | R@1 | R@5 | R@10 | mAP | after above before |", "|---|---|---:|---:|---:|---:|---:|"]
    for task, method in methods:
        m = (text if task == TEXT else composed)[method]
        pairwise = _pct(m["after above before"]) if "after above before" in m else ""
        lines.append(f"| {task} | {method} | {_pct(m['R@1'])} | {_pct(m['R@5'])} | {_pct(m['R@10'])} | "
                     f"{_pct(m['mAP'])} | {pairwise} |")
    return lines


def _mean_interval(values) -> str:
    mean, half = paired_interval(values)
    return f"{100 * mean:.1f} ± {100 * half:.1f}"


def _seed_summary(groups: dict[str, list[dict]], reference: str | None = None) -> list[str]:
    """Mean ± 95 % t-interval over seeds per group; with ``reference``, also the paired differences."""
    picked = [COLUMNS[i] for i in (1, 2, 4, 5, 7)]
    lines = ["| setting | seeds | " + " | ".join(c for c, _ in picked) + " |", "|---|---:|" + "---:|" * len(picked)]
    for label, rows in groups.items():
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(_mean_interval([f(r) for r in rows]) for _, f in picked)
                     + " |")
    if reference in groups:
        lines += ["", f"Paired differences from {reference} (same seeds; mean ± 95 % t-interval, points):", "",
                  "| setting | " + " | ".join(f"Δ {c}" for c, _ in picked) + " |", "|---|" + "---:|" * len(picked)]
        for label, rows in groups.items():
            if label != reference:
                base = groups[reference]
                lines.append(f"| {label} | " + " | ".join(
                    _mean_interval([f(r) - f(b) for r, b in zip(rows, base)]) for _, f in picked) + " |")
    return lines


def report(results: dict) -> str:
    lines = ["# X-Modal on the embedded data", "",
             "Written by `python benchmarks/xmodal_study.py` (its docstring says how each row is run). Metrics in %; "
             "'gap closed' is (R@10 − chance) / (attribute oracle − chance) of text → face. CPU seconds are user + "
             "sys of single-threaded runs (`threads=1`, unless a row's config says otherwise) on a machine shared "
             "with other jobs, which inflates them; "
             "rows marked cold include rendering the faces and encoding the captions.", ""]
    first = next(iter(results.values()), None)
    if first is not None:
        lines += ["## Bounds (seed 0 data: 90 unseen people, 540 text and 180 composed queries)", ""] + \
            _bounds(results.get("quick seed 0", first)) + [""]
    changes = [name for name, _, _ in part_rows("changes") if name in results]
    if changes:
        lines += ["## What each change bought (seed 0, each row adds its change to the row above)", ""] + \
            _table(changes, results, deltas=True) + [""]
    for part, title in (("seeds", "The quick preset over seeds"),
                        ("15-epoch seeds", "The quick preset at 15 epochs over seeds"),
                        ("15-epoch no read-outs", "The quick preset at 15 epochs without the attribute read-outs over "
                                                  "seeds"),
                        ("small seeds", "The second quick preset (300 people, 2 change pairs each, 60 epochs) over "
                                        "seeds")):
        seeds = [name for name, _, _ in part_rows(part) if name in results]
        if not seeds:
            continue
        lines += [f"## {title}", ""] + _table(seeds, results) + [""]
        rows = [results[n] for n in seeds]
        r1 = [r["results"][COMPOSED]["X-Modal"]["R@1"] - r["results"][COMPOSED]["image only"]["R@1"] for r in rows]
        pair = [r["results"][COMPOSED]["X-Modal"]["after above before"] for r in rows]
        if len(rows) < 2:
            lines += [f"Only {len(rows)} of the {len(SEEDS)} seeds ran (`python benchmarks/xmodal_study.py part "
                      f"'{part}'`): no interval yet.", ""]
        else:
            lines += [f"Text + image → face R@1, X-Modal − image only, paired over {len(rows)} seeds: "
                      f"{_mean_interval(r1)} points (95 % t-interval); after above before {_mean_interval(pair)} %; "
                      f"text → face R@10 gap closed {_mean_interval([gap_closed(r) for r in rows])} %.", ""]
    for part, title in (("grades", "Negative grades, quick preset"),
                        ("15-epoch grades", "Negative grades, quick preset at 15 epochs"),
                        ("small grades", "Negative grades, second quick preset")):
        grades = {}
        for name, _, overrides in part_rows(part):
            if name in results:
                grades.setdefault(next(o for o in overrides if o.startswith("negatives=")), []).append(results[name])
        if grades:
            lines += [f"## {title} (mean ± 95 % t-interval over seeds)", ""] + \
                _seed_summary(grades, "negatives=none") + [""]
    for part, title in (("encoders", "Face encoders, quick preset"),
                        ("15-epoch encoders", "Face encoders, quick preset at 15 epochs"),
                        ("small encoders", "Face encoders, second quick preset"), ("full", "The full preset")):
        names = [name for name, _, _ in part_rows(part) if name in results]
        if names:
            lines += [f"## {title}", ""] + _table(names, results) + [""]
    probed = [name for name in results if "probe" in results[name]]
    if probed:
        lines += ["## Where text → face stops: what can be read from each side (test people, %)", "",
                  "A logistic regression per attribute, fitted on the training people's photos and scored on the "
                  "test people's: from the frozen sentence vector of a photo's first caption to the value it "
                  "states (photos whose caption states the attribute), and from a trained face embedding to the "
                  "true value (every photo). `python benchmarks/xmodal_study.py probe NAME`.", ""] + \
            _probe_table(probed, results) + [""]
    readers = [results[n] for n in results if n.startswith("supervised ")]
    if readers:
        lines += ["## The face encoder on one attribute alone (quick preset's encoder and data, seed 0)", "",
                  "`python benchmarks/xmodal_study.py supervised ATTRIBUTE`: the encoder and a linear head trained "
                  "on that attribute only; accuracy on the unseen test people's photos (%).", "",
                  "| attribute | AdamW steps × batch | test accuracy | test majority | CPU s |",
                  "|---|---:|---:|---:|---:|"] + \
            [f"| {r['attribute']} | {r['steps']} × {r['batch']} | {_pct(r['test accuracy'])} | "
             f"{_pct(r['test majority'])} | {r['cpu_s']:.0f} |" for r in readers] + [""]
    planned = {name for part in PARTS for name, _, _ in part_rows(part)}
    others = [n for n in results if n not in planned and not n.startswith("supervised ")]
    if others:
        lines += ["## Other runs", ""] + _table(others, results) + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    global RESULTS, REPORT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/xmodal_study"), help="run directories and caches")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help=f"the results file (default {RESULTS.relative_to(HERE.parent)}; the tables go beside it)")
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="one row")
    one.add_argument("name")
    one.add_argument("overrides", nargs="*")
    one.add_argument("--preset", default="quick")
    one.add_argument("--cold", action="store_true", help="start from an empty run directory")
    one.add_argument("--threads", type=int, default=1, help="threads of the row's training and evaluation")
    planned = sub.add_parser("part", help="a planned set of rows")
    planned.add_argument("part", choices=PARTS)
    planned.add_argument("--jobs", type=int, default=1, help="rows run at once")
    planned.add_argument("--threads", type=int, default=1, help="threads of each row")
    probing = sub.add_parser("probe", help="attribute probes of a finished row's face embeddings")
    probing.add_argument("names", nargs="+")
    reading = sub.add_parser("supervised", help="the face encoder trained on one attribute alone")
    reading.add_argument("attributes", nargs="+")
    sub.add_parser("report", help="write the tables from the results")
    args = parser.parse_args(argv)
    RESULTS, REPORT = args.results, args.results.with_suffix(".md")
    if args.command == "run":
        run_row(args.name, args.preset, args.overrides, args.work, args.cold, args.threads)
    elif args.command == "probe":
        for name in args.names:
            probe(name, args.work)
    elif args.command == "supervised":
        for attribute in args.attributes:
            supervised(attribute, args.work)
    elif args.command == "part":
        rows = part_rows(args.part)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda r: run_row(r[0], r[1], r[2], args.work, threads=args.threads), rows))
    REPORT.write_text(report(load_results()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
