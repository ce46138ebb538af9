"""The shape of the house: a headless engine and side-effect-free imports."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import pipelines

REPO = Path(__file__).resolve().parents[1]


def _all_pipeline_modules():
    return [m.name for m in pkgutil.walk_packages(pipelines.__path__, "pipelines.")]


def test_pipelines_never_imports_gradio():
    mods = _all_pipeline_modules()
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = [m for m in sys.modules if m == 'gradio' or m.startswith('gradio.')]\n"
        "assert not bad, bad\n"
        "print(len(sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # and no module of pipelines mentions gradio in an import statement
    for path in (REPO / "pipelines").rglob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            assert not (s.startswith("import gradio") or s.startswith("from gradio")), path


def test_import_launch_has_no_side_effects(tmp_path):
    code = (
        "import sys, os\n"
        "before = set(os.listdir('.'))\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import launch, pipelines, pipelines.cli.main\n"
        "assert set(os.listdir('.')) == before, 'files created at import'\n"
        "heavy = [m for m in ('torch', 'diffusers', 'gradio', 'insightface') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
