"""The shape of the house: a headless engine and side-effect-free imports."""

import ast
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pipelines

REPO = Path(__file__).resolve().parents[1]


def _all_pipeline_modules():
    return [m.name for m in pkgutil.walk_packages(pipelines.__path__, "pipelines.")]


def _run_python(lines: list[str], cwd: Path, timeout: int) -> None:
    """Run `lines` as the program of a fresh interpreter in `cwd`; fail with its stderr."""
    r = subprocess.run([sys.executable, "-c", "\n".join(lines)], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]


def test_pipelines_never_imports_gradio():
    mods = _all_pipeline_modules()
    _run_python([
        "import importlib, sys",
        f"for m in {mods!r}:",
        "    importlib.import_module(m)",
        "bad = [m for m in sys.modules if m == 'gradio' or m.startswith('gradio.')]",
        "assert not bad, bad",
        "print(len(sys.modules))",
    ], cwd=REPO, timeout=300)
    # and no module of pipelines mentions gradio in an import statement
    for path in (REPO / "pipelines").rglob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            assert not (s.startswith("import gradio") or s.startswith("from gradio")), path


def test_import_launch_has_no_side_effects(tmp_path):
    _run_python([
        "import sys, os",
        "before = set(os.listdir('.'))",
        f"sys.path.insert(0, {str(REPO)!r})",
        "import launch, pipelines, cli.main",
        "assert set(os.listdir('.')) == before, 'files created at import'",
        "heavy = [m for m in ('torch', 'diffusers', 'gradio', 'insightface') if m in sys.modules]",
        "assert not heavy, heavy",
    ], cwd=tmp_path, timeout=120)


# ---- the import contract ----------------------------------------------------------------------
# Every rule reads every import statement with `ast` (module level, inside functions, under
# TYPE_CHECKING), resolves relative imports, and fails naming file:line and the import.
# The layers, from the bottom: errors/paths/types, the model store (pipelines/models), the
# engine's parts and the identity methods, the engine (all of pipelines/), then the front
# doors beside each other: the web UI (app/) and the command line (cli/, started by launch.py).

FRONT_DOORS = ("app", "cli")
# what pipelines/models/ may import from the project besides itself: the foundation
MODEL_LAYER_MAY_IMPORT = ("pipelines.errors", "pipelines.paths", "pipelines.types")
# the interface every identity method implements (the one identity module a method may import)
IDENTITY_INTERFACE = "pipelines.identity.base"


def _module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, root: Path = REPO, module_level_only: bool = False) -> list[tuple[str, int]]:
    """(absolute dotted target, line) for each import in `path`; `from X import a` yields
    X and X.a (a may be a submodule). With `module_level_only`, imports inside functions
    and under `if TYPE_CHECKING:` are left out: those run later or never."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    mod = _module_name(path, root)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: list[tuple[str, int]] = []

    def visit(node) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if module_level_only and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if child.module:
                    out.append((target, child.lineno))
                out.extend((f"{target}.{a.name}", child.lineno) for a in child.names)
            visit(child)

    visit(tree)
    return out


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations(files, forbidden, root: Path = REPO) -> list[str]:
    """'file:line imports target' for each import `forbidden(importer, target)` refuses."""
    bad = []
    for path in files:
        importer = _module_name(path, root)
        for target, line in _imports(path, root):
            if forbidden(importer, target):
                bad.append(f"{path.relative_to(root)}:{line} imports {target}")
    return sorted(set(bad))


def _pipelines_files(root: Path = REPO):
    return sorted((root / "pipelines").rglob("*.py"))


def _engine_must_not_import(importer: str, target: str) -> bool:
    """The engine (all of pipelines/) never reaches up to a front door (app, cli, launch.py)
    and never imports gradio."""
    return any(_within(target, top) for top in (*FRONT_DOORS, "launch", "gradio"))


def test_the_engine_imports_no_front_door_and_no_gradio():
    assert _violations(_pipelines_files(), _engine_must_not_import) == []


def test_the_web_ui_does_not_import_the_command_line():
    """The two front doors sit side by side on the engine: what both need lives below them."""
    app_files = sorted((REPO / "app").rglob("*.py"))
    assert _violations(app_files, lambda importer, target: _within(target, FRONT_DOORS[1])) == []


def _method_imports_another(importer: str, target: str) -> bool:
    if not _within(importer, "pipelines.identity") or importer in ("pipelines.identity", IDENTITY_INTERFACE):
        return False
    if not _within(target, "pipelines.identity"):
        return False
    return not (_within(target, IDENTITY_INTERFACE) or _within(target, importer) or target == "pipelines.identity")


def test_identity_methods_do_not_import_each_other():
    """A method is one file: it implements identity/base.py and may use anything below the
    engine, but never another method (the registry in identity/__init__.py lists them)."""
    assert _violations(sorted((REPO / "pipelines" / "identity").glob("*.py")), _method_imports_another) == []


def _reaches_above_the_model_layer(importer: str, target: str) -> bool:
    if not _within(target, "pipelines") or _within(target, "pipelines.models"):
        return False
    if target == "pipelines":  # `from .. import x` names x separately
        return False
    return not any(_within(target, ok) for ok in MODEL_LAYER_MAY_IMPORT)


def test_the_model_layer_imports_nothing_above_it():
    """pipelines/models/ (catalog, store, downloads, conversion) is used by everything and
    imports only itself and the foundation: no method, stage, engine or demo pack (the store
    is handed its demo packs by pipelines/stores.py)."""
    assert _violations(sorted((REPO / "pipelines" / "models").rglob("*.py")), _reaches_above_the_model_layer) == []


def _layer_graph(module_level_only: bool, packages_only: bool = False) -> dict[str, set[str]]:
    """Edges between pipelines' second-level names (subpackages and top-level modules)."""
    graph: dict[str, set[str]] = {}

    def node(name: str) -> str | None:
        parts = name.split(".")
        if len(parts) < 2 or parts[0] != "pipelines":
            return None
        if packages_only and not (REPO / "pipelines" / parts[1]).is_dir():
            return None
        if not ((REPO / "pipelines" / parts[1]).is_dir() or (REPO / "pipelines" / f"{parts[1]}.py").is_file()):
            return None  # a name imported from the package itself (`from .. import x` with x a function)
        return "pipelines." + parts[1]

    for path in _pipelines_files():
        src = node(_module_name(path))
        if src is None:
            continue
        for target, _ in _imports(path, module_level_only=module_level_only):
            dst = node(target)
            if dst is not None and dst != src:
                graph.setdefault(src, set()).add(dst)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_no_import_cycle_at_import_time():
    """Importing any module of pipelines/ never runs into a cycle between its subpackages and
    top-level modules (imports inside functions run later and are left out here)."""
    assert _cycles(_layer_graph(module_level_only=True)) == []


def test_subpackages_form_no_cycle():
    """Counting imports inside functions too, no two subpackages depend on each other."""
    assert _cycles(_layer_graph(module_level_only=False, packages_only=True)) == []


def test_the_model_layer_and_the_demo_packs_are_in_no_cycle():
    """Counting imports inside functions too, neither the model store nor the demo packs that
    are built for it can be reached back from what they reach."""
    cycles = _cycles(_layer_graph(module_level_only=False))
    assert [c for c in cycles if {"pipelines.models", "pipelines.tiny", "pipelines.stores"} & set(c)] == []


# A registry that imports its entries by name (importlib) names them in strings such as
# "pipelines.identity.faceid:FaceIDPlusV2"; the module graph counts those as imports.
_MODULE_NAME_STRING = re.compile(r"pipelines(\.\w+)+(:\w+)?")

# The cycles among pipelines' modules that are by design, each with its reason: a cycle is
# allowed when every module in it lies within the names of one entry. Any other cycle fails.
ALLOWED_CYCLES: dict[tuple[str, ...], str] = {
    ("pipelines.tiny",): (
        "a plugin registry: tiny/__init__.py imports its builder modules by name on first use, "
        "and each builder registers itself with the registry's `pack` decorator; builders never "
        "import each other"
    ),
}


def _module_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Edges between pipelines' modules (one node per file, a package by its
    __init__), counting every import: at module level, inside functions and under
    TYPE_CHECKING, plus the modules a registry imports by name. An import of a name
    from a module is an edge to that module (`from pkg import sub` to pkg.sub)."""
    files = _pipelines_files(root)
    modules = {_module_name(path, root) for path in files}

    def node(name: str) -> str | None:
        parts = name.split(".")
        while parts:
            if ".".join(parts) in modules:
                return ".".join(parts)
            parts.pop()
        return None

    graph: dict[str, set[str]] = {}
    for path in files:
        src = _module_name(path, root)
        targets = [t for t, _ in _imports(path, root)]
        targets += [n.value.partition(":")[0] for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    if isinstance(n, ast.Constant) and isinstance(n.value, str)
                    and _MODULE_NAME_STRING.fullmatch(n.value)]
        for target in targets:
            dst = node(target)
            if dst is not None and dst != src:
                graph.setdefault(src, set()).add(dst)
    return graph


def _cycle_path(graph: dict[str, set[str]], members: list[str]) -> str:
    """One closed import path through a strongly connected component, for the message."""
    inside = set(members)
    start = members[0]
    path, seen = [start], {start}
    while True:
        nxt = sorted(graph[path[-1]] & inside)
        back = [m for m in nxt if m == start]
        if back and len(path) > 1:
            return " -> ".join([*path, start])
        fresh = [m for m in nxt if m not in seen]
        if not fresh:  # the way back to `start` passes a module already on the path
            target = next(m for m in nxt if m in seen)
            return " -> ".join([*path[path.index(target):], target])
        path.append(fresh[0])
        seen.add(fresh[0])


def _disallowed_cycles(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for members in _cycles(graph):
        if any(all(any(_within(m, p) for p in names) for m in members) for names in ALLOWED_CYCLES):
            continue
        out.append(f"{len(members)} modules in a cycle, e.g. {_cycle_path(graph, members)}")
    return out


def test_no_module_of_pipelines_is_in_an_import_cycle():
    """Counting imports inside functions too, no module of pipelines/ imports, directly
    or through others, a module that imports it, except the few cycles in
    ALLOWED_CYCLES. The steps (finishing, face detail, upscale, templates, the image
    loop, two people) are below the engine, and the identity methods below speed.py."""
    assert _disallowed_cycles(_module_graph()) == []


def test_no_cycle_between_subpackages_and_top_level_modules():
    """Counting imports inside functions too, with each subpackage as one part: no two
    parts of pipelines/ (speed.py and identity/, engine.py and its steps) depend on
    each other."""
    assert _cycles(_layer_graph(module_level_only=False)) == []


def test_the_allowed_cycles_still_exist():
    """An allow-list entry whose cycle is gone is removed, so the list stays small."""
    cycles = _cycles(_module_graph())
    for names in ALLOWED_CYCLES:
        assert any(all(any(_within(m, p) for p in names) for m in c) for c in cycles), names


def test_the_engine_sits_above_its_steps_and_speed_above_the_methods():
    """The two cycles that were broken stay broken, module by module: no step and no
    identity method reaches `engine.py` or `speed.py`, even through other modules."""
    graph = _module_graph()

    def reach(src: str) -> set[str]:
        seen, todo = set(), [src]
        while todo:
            for dst in graph.get(todo.pop(), ()):
                if dst not in seen:
                    seen.add(dst)
                    todo.append(dst)
        return seen

    for step in (*ENGINE_STEPS, "bundles"):
        assert "pipelines.engine" not in reach(f"pipelines.{step}"), step
    for method in ("faceid", "instantid", "wplus", "arc2face", "pulid"):
        assert "pipelines.speed" not in reach(f"pipelines.identity.{method}"), method


ENGINE_STEPS = ("finishing", "upscale", "detail", "templates", "imageloop", "multi_person")


def _engine_services() -> set[str]:
    from pipelines.types import EngineServices

    return set(EngineServices.__annotations__) | {
        n for n, v in vars(EngineServices).items() if callable(v) and not n.startswith("_")}


def test_the_steps_use_only_what_engine_services_declares():
    """A step reads the engine it is given (`engine`, `self.engine`, `ctx.engine`) only
    through the members of `EngineServices`, and writes none of them."""
    members = _engine_services()
    bad = []
    for step in ENGINE_STEPS:
        path = REPO / "pipelines" / f"{step}.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute):
                continue
            holder = node.value
            is_engine = (isinstance(holder, ast.Name) and holder.id == "engine") or (
                isinstance(holder, ast.Attribute) and holder.attr == "engine")
            if is_engine and (node.attr not in members or isinstance(node.ctx, ast.Store)):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} engine.{node.attr}")
    assert bad == []


def test_the_engine_provides_engine_services(tmp_path):
    from pipelines.engine import Engine
    from pipelines.settings import load_settings
    from pipelines.types import EngineServices

    engine = Engine(load_settings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "out",
                                  loras_dir=tmp_path / "loras", device="cpu", dtype="float32"))
    assert isinstance(engine, EngineServices)
    assert all(hasattr(engine, m) for m in _engine_services())
    built = []
    first = engine.resident("kind", "key", lambda: built.append(1) or object())
    assert engine.resident("kind", "key", object) is first and built == [1]  # kept
    assert engine.resident("kind", "key", object, fits=lambda kept: False) is not first  # rebuilt


def test_the_contract_checker_finds_every_kind_of_import(tmp_path):
    """The rules above would fail on the imports they forbid: relative, absolute, inside a
    function and under TYPE_CHECKING, each named with its file and line."""
    pkg = tmp_path / "pipelines"
    (pkg / "models").mkdir(parents=True)
    (pkg / "identity").mkdir()
    for d in (pkg, pkg / "models", pkg / "identity"):
        (d / "__init__.py").write_text("")
    (pkg / "models" / "store.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from ..errors import BadInput\n"
        "if TYPE_CHECKING:\n"
        "    from ..engine import Engine\n"
        "def build():\n"
        "    from .. import tiny\n"
    )
    (pkg / "identity" / "faceid.py").write_text(
        "from .base import IdentityMethod\nfrom . import instantid\nimport pipelines.identity.pulid as p\n"
    )
    (pkg / "engine.py").write_text("def ui():\n    import gradio\n    from app import ui\n")
    models = sorted((pkg / "models").rglob("*.py"))
    assert _violations(models, _reaches_above_the_model_layer, tmp_path) == [
        "pipelines/models/store.py:4 imports pipelines.engine",
        "pipelines/models/store.py:4 imports pipelines.engine.Engine",
        "pipelines/models/store.py:6 imports pipelines.tiny",
    ]
    assert _violations([pkg / "identity" / "faceid.py"], _method_imports_another, tmp_path) == [
        "pipelines/identity/faceid.py:2 imports pipelines.identity.instantid",
        "pipelines/identity/faceid.py:3 imports pipelines.identity.pulid",
    ]
    assert _violations([pkg / "engine.py"], _engine_must_not_import, tmp_path) == [
        "pipelines/engine.py:2 imports gradio",
        "pipelines/engine.py:3 imports app",
        "pipelines/engine.py:3 imports app.ui",
    ]
    # module-level reading leaves out what runs later or never
    assert [t for t, _ in _imports(pkg / "models" / "store.py", tmp_path, module_level_only=True)] == [
        "typing", "typing.TYPE_CHECKING", "pipelines.errors", "pipelines.errors.BadInput",
    ]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    # the module graph counts an import inside a function and a registry's module name
    (pkg / "speed.py").write_text("def mode():\n    from .identity import get_method_class\n")
    (pkg / "identity" / "__init__.py").write_text('_METHODS = {"arc2face": "pipelines.identity.arc2face:Arc2Face"}\n')
    (pkg / "identity" / "arc2face.py").write_text("from ..speed import SpeedMode\n")
    graph = _module_graph(tmp_path)
    assert graph["pipelines.identity"] == {"pipelines.identity.arc2face"}
    assert _disallowed_cycles(graph) == [
        "3 modules in a cycle, e.g. pipelines.identity -> pipelines.identity.arc2face -> pipelines.speed "
        "-> pipelines.identity"
    ]


def test_the_store_builds_demo_packs_only_through_what_it_is_given(tmp_path):
    """Demo packs are injected: the store calls the DemoPacks it was handed, and a store
    opened without them says how to open one."""
    from pipelines.errors import ModelError
    from pipelines.models.catalog import Catalog
    from pipelines.models.store import ModelStore
    from pipelines.settings import load_settings

    class FakePacks:
        def __init__(self):
            self.built = []

        def get(self, name):
            if name != "fake-pack":
                raise KeyError(name)
            return name

        def is_built(self, name, folder):
            return False

        def build_pack(self, name, dest):
            self.built.append(name)
            dest.mkdir(parents=True)
            (dest / "config.json").write_text("{}")
            return dest

    cat = Catalog.model_validate({"model": [{
        "name": "fake-vae", "kind": "vae", "source": "hf", "repo": "o/r", "license": "MIT",
        "demo_pack": "fake-pack", "files": [{"path": "config.json"}],
    }]})
    settings = load_settings(models_dir=tmp_path / "models", loras_dir=tmp_path / "loras",
                             outputs_dir=tmp_path / "outputs", device="cpu", demo=True)
    packs = FakePacks()
    folder = ModelStore(settings, cat, demo_packs=packs).ensure("fake-vae")
    assert packs.built == ["fake-pack"] and (folder / "config.json").read_text() == "{}"
    with pytest.raises(ModelError, match="opened without demo packs.*open_store"):
        ModelStore(settings, cat).ensure("fake-vae")


def test_a_wrapped_library_error_keeps_its_cause_for_debug(tmp_path, capsys):
    """Project errors wrap library errors with `raise ... from exc`: the user reads one line,
    and --debug's traceback still shows the library's error as the direct cause."""
    from cli.main import run

    job = tmp_path / "job.json"
    job.write_text('{"identities": {,}', encoding="utf-8")
    flags = ["--models-dir", str(tmp_path / "m"), "--device", "cpu"]
    assert run(["batch", str(job), "--dry-run", *flags]) == 2
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        f"error: job file {job}, line 1: not valid JSON (Expecting property name enclosed in double quotes)."
    ]
    assert run(["--debug", "batch", str(job), "--dry-run", *flags]) == 2
    err = capsys.readouterr().err
    assert "json.decoder.JSONDecodeError" in err
    assert "The above exception was the direct cause of the following exception" in err
