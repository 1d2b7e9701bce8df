"""The ops library's structure: each op in one module, one leaf of shared pieces, backends as a table.

* ``tgfr/ops/common.py`` imports nothing of tgfr, and the Triton host code (``kernels/*.py``,
  installed as ``tgfr.kernels``) imports nothing of tgfr beyond it: no import cycle between
  the ops and their kernels.
* The module-level imports of ``tgfr.ops`` and ``tgfr.kernels`` form no cycle.
* Dispatch has a record for every backend name, ``"auto"`` names only records, and every
  pure-PyTorch record has an implementation in each op's module.
* The C++ four-function contract is declared once.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import torch

from tgfr.ops import BACKENDS, backends

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "tgfr" / "ops"
KERNELS = ROOT / "kernels"
LEAF = "tgfr.ops.common"


def module_name(path: Path) -> str:
    package = "tgfr.kernels" if path.parent == KERNELS else "tgfr.ops"
    return package if path.stem == "__init__" else f"{package}.{path.stem}"


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The modules of tgfr that ``path`` imports (relative imports resolved; ``from x import y``
    counted as ``x`` and, where ``x.y`` is one of our modules, ``x.y``)."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.stem == "__init__" else module_name(path).rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}")}
    return {name for name in found if name == "tgfr" or name.startswith("tgfr.")}


def _is_module(name: str) -> bool:
    stem = name.rsplit(".", 1)[-1]
    return (name.startswith("tgfr.ops.") and (OPS / f"{stem}.py").exists()) or (
        name.startswith("tgfr.kernels.") and (KERNELS / f"{stem}.py").exists())


def test_the_leaf_imports_nothing_of_ours():
    assert imports(OPS / "common.py") == set()


def test_the_triton_host_code_imports_only_the_leaf_of_the_ops():
    for path in sorted(KERNELS.glob("*.py")):
        ours = {name for name in imports(path) if not name.startswith("tgfr.kernels")}
        assert ours <= {LEAF}, f"{path.name} imports {sorted(ours - {LEAF})}"


def test_no_import_cycle_between_the_ops_and_their_kernels():
    paths = sorted(OPS.glob("*.py")) + sorted(KERNELS.glob("*.py"))
    graph = {module_name(p): imports(p, top_level_only=True) for p in paths}
    # importing a submodule imports its package first (a package's own modules are imported from it)
    for name, targets in graph.items():
        own_package = name.rsplit(".", 1)[0]
        targets = targets | {t.rsplit(".", 1)[0] for t in targets}
        graph[name] = {t for t in targets if t in graph and t not in (name, own_package)}
    state = {}

    def visit(name, trail):
        if state.get(name) == "open":
            raise AssertionError("import cycle: " + " -> ".join(trail + [name]))
        if state.get(name) == "done":
            return
        state[name] = "open"
        for target in sorted(graph[name]):
            visit(target, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_dispatch_has_a_record_for_every_backend():
    assert set(BACKENDS) == set(backends.RECORDS)
    for record in backends.RECORDS.values():
        assert record.name in BACKENDS and set(record.native_dtypes) <= {
            torch.float16, torch.bfloat16, torch.float32, torch.float64}
        if record.fused:
            assert record.label and record.install_hint, record.name
    for order in [*backends.AUTO_ORDER.values(), backends.FALLBACK_ORDER]:
        assert set(order) <= set(BACKENDS) and order[-1] == "vectorized"  # "auto" always finds one
    pure = {name for name, record in backends.RECORDS.items() if not record.fused}
    for op in ("tgfr.ops.word_region", "tgfr.ops.info_nce"):
        assert set(importlib.import_module(op).PURE_PYTORCH) == pure, op


def _names_a_backend(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id in ("backend", "name")) or (
        isinstance(node, ast.Attribute) and node.attr == "name")


def test_no_string_switch_on_backend_names_in_the_ops():
    """Dispatch looks backends up in the table: no ``backend == "cpp"`` or ``backend in ("cpp", "cuda")``."""
    for path in sorted(OPS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(map(_names_a_backend, [node.left, *node.comparators])):
                constants = [c for c in ast.walk(node) if isinstance(c, ast.Constant)]
                named = [c.value for c in constants if isinstance(c.value, str) and c.value in BACKENDS]
                assert not named, f"{path.name}:{node.lineno} compares a backend with {named}"


def test_the_cpp_contract_is_declared_once():
    header = (ROOT / "csrc" / "tgfr.h").read_text()
    for entry_point in ("word_region_scores_forward", "word_region_scores_backward", "info_nce_forward",
                        "info_nce_backward"):
        assert header.count(f" {entry_point}(") == 1, entry_point
