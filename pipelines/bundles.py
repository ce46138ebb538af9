"""What a choice needs on this machine, what is still missing, and the one command
that fetches it.

This sits above the model store: it reads the identity methods, the pose and
restore stages and the presets to know which catalog models they use.

Rules:
- A bundle is derived from the code that uses the models, never a second list:
  an identity method's `base` (its default base model), `required_models` and
  `recognizer`; the pose stage's ControlNet and annotator; the restorers' specs
  and a face detector pack. On this machine: an SDXL base run in float16 (the
  GPU default) also needs `sdxl-vae-fp16-fix`.
- Choices: one per identity method, `pose`, `restore`, `upscale` (the
  `--upscaler` models; 4x-UltraSharp is non-commercial, so the bundle needs
  --accept-license), `all`, and `preset NAME` (its method, pose and restorer).
- Every "run this" hint the app prints comes from `download_command`
  (`models/commands.py`), so each one is a command the real parser accepts
  (tests parse them all).
- A request that lacks models fails once, naming all of them (`MissingModels`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInput, ModelMissing
from .models.catalog import Catalog, ModelEntry, human_size
from .models.commands import download_command, model_command  # noqa: F401  (model_command re-exported)

OTHER_CHOICES = ("pose", "restore", "upscale", "all")


def method_choices() -> tuple[str, ...]:
    """One bundle per registered identity method (a new method file adds its own)."""
    from .identity import method_names

    return tuple(method_names())


def bundle_choices() -> tuple[str, ...]:
    return (*method_choices(), *OTHER_CHOICES)
FP16_VAE_FIX = "sdxl-vae-fp16-fix"
POSE_CONTROLNET = "controlnet-openpose-sdxl"
POSE_ANNOTATOR = "openpose-annotator"
# extra room kept free after a download (filesystems misbehave when full)
DISK_MARGIN = 200_000_000


def choice_command(tokens, settings, catalog: Catalog) -> str:
    """The bundle command for `tokens`, with --accept-license when the bundle
    holds research-only models."""
    research = any(catalog.get(n).research_only for n in choice_models(tokens, settings, catalog))
    return download_command(choice=tuple(tokens), accept_license=research)


# ---- what a choice needs ------------------------------------------------------------------
def uses_fp16(settings) -> bool:
    """True when SDXL runs in float16 here (the default on CUDA and MPS)."""
    if settings.dtype != "auto":
        return settings.dtype == "float16"
    device = settings.device if settings.device != "auto" else settings.resolve_device()
    return device in ("cuda", "mps")


def _default_base(family: str) -> str:
    from .models.bases import DEFAULT_BASE  # the base a method runs on when a request names none

    return DEFAULT_BASE[family]


def base_models(base: str, settings, family: str | None = None, vae: str = "auto") -> list[str]:
    """The base model plus the fp16 VAE fix when this machine needs it (the
    engine swaps it in for an SDXL base in float16 with vae 'auto')."""
    family = family or ("sd15" if base == _default_base("sd15") else "sdxl")
    needs_fix = vae == "fp16-fix" or (vae == "auto" and family == "sdxl" and uses_fp16(settings))
    return [base, FP16_VAE_FIX] if needs_fix else [base]


def plain_models(settings) -> list[str]:
    """What generating without an identity method needs: the default SDXL base."""
    return base_models(_default_base("sdxl"), settings, "sdxl")


def method_models(method: str, settings) -> list[str]:
    from .identity import get_method_class

    cls = get_method_class(method)
    names = base_models(_default_base(cls.base), settings, cls.base)
    names += list(cls.required_models)
    if cls.recognizer:
        names.append(cls.recognizer)
    return _unique(names)


def detector_packs() -> tuple[str, ...]:
    from .restore.stage import DETECTOR_PACKS

    return DETECTOR_PACKS


def restore_models(restorers=None) -> list[str]:
    """The restorers' weights plus a face detector pack (the restore stage
    finds the faces in the output first)."""
    from .restore.base import RESTORERS

    names = [RESTORERS[r].model for r in (restorers or RESTORERS)]
    return _unique([*names, detector_packs()[0]])


def upscale_models(upscalers=None) -> list[str]:
    """The catalog models of the `--upscaler` choices (all of them by default)."""
    from .upscale import UPSCALERS, upscaler_spec

    return _unique(upscaler_spec(u).model for u in (upscalers or UPSCALERS))


def preset_models(name: str, settings) -> list[str]:
    from .presets import get_preset, user_presets_dir

    preset = get_preset(name, user_dir=user_presets_dir(settings))  # shipped, then the user's own
    names = method_models(preset.method, settings)
    if preset.pose:
        names.append(POSE_CONTROLNET)
    if preset.restore != "none":
        names += restore_models([preset.restore])
    return _unique(names)


def parse_choice(tokens) -> list[tuple[str, ...]]:
    """['faceid', 'pose'] -> [('faceid',), ('pose',)]; 'preset' takes the next token."""
    out: list[tuple[str, ...]] = []
    tokens = list(tokens or [])
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t == "preset":
            if i + 1 >= len(tokens):
                raise BadInput("--for preset needs a preset name (see `python launch.py presets list`).")
            out.append(("preset", tokens[i + 1]))
            i += 2
            continue
        if t not in bundle_choices():
            raise BadInput(f"--for {t!r} is unknown; choose from: {', '.join(bundle_choices())}, preset NAME.")
        out.append((t,))
        i += 1
    return out


def choice_models(tokens, settings, catalog: Catalog) -> list[str]:
    """Every catalog model the bundle choice needs on this machine."""
    names: list[str] = []
    for item in parse_choice(tokens):
        if item[0] == "all":
            names += [e.name for e in catalog]
        elif item[0] in method_choices():
            names += method_models(item[0], settings)
        elif item[0] == "pose":
            names += [POSE_CONTROLNET, POSE_ANNOTATOR]
        elif item[0] == "restore":
            names += restore_models()
        elif item[0] == "upscale":
            names += upscale_models()
        else:
            names += preset_models(item[1], settings)
    for n in names:
        catalog.get(n)  # a bundle naming a model the catalog lacks is a bug: say which
    return _unique(names)


def request_models(req, settings, store) -> list[str]:
    """Every catalog model that generating `req` loads (real mode)."""
    from .identity import get_method_class

    cls = get_method_class(req.method) if req.method != "none" else None
    family = cls.base if cls is not None else "sdxl"
    base = req.base_model or _default_base(family)
    names: list[str] = []
    if base in store.user_checkpoints():
        names.append("sdxl-base-config")
        names += [n for n in base_models(base, settings, "sdxl", req.vae) if n != base]
    else:
        kind = store.catalog.get(base).kind
        names += base_models(base, settings, kind if kind in ("sdxl", "sd15") else family, req.vae)
    if cls is not None:
        names += list(cls.required_models)
        if cls.recognizer and req.photos:  # a saved identity card already holds the embeddings
            names.append(cls.recognizer)
    if req.pose:
        from .pose.control import PHOTO_SUFFIXES

        names.append(POSE_CONTROLNET)
        if Path(req.pose).suffix.lower() in PHOTO_SUFFIXES:  # a pose taken from a photo needs the annotator
            names.append(POSE_ANNOTATOR)
    if getattr(req, "speed", "quality") != "quality":  # fast/turbo: their distilled LoRA
        from .speed import mode_for

        lora = mode_for(req.speed, req.method).lora
        if lora is not None:  # every mode but quality has one
            names.append(lora)
    if getattr(req, "upscale", 1) != 1:  # the spandrel upscaler the request names
        names += upscale_models([req.upscaler])
    if req.restore != "none":
        from .restore.base import RESTORERS

        names.append(RESTORERS[req.restore].model)
        if not any(p in names or store.status(p).present for p in detector_packs()):
            names.append(detector_packs()[0])
    return _unique(names)


# ---- what is missing, and the plan to fetch it ----------------------------------------------
@dataclass
class PlanItem:
    entry: ModelEntry
    remaining: int | None  # bytes still to fetch (None: not known)
    exact: bool
    peak_extra: int = 0  # a published pickle is converted: its safetensors copy exists beside it for a moment


@dataclass
class DownloadPlan:
    items: list[PlanItem] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    folder: Path | None = None
    free: int | None = None

    @property
    def names(self) -> list[str]:
        return [i.entry.name for i in self.items]

    @property
    def total(self) -> int:
        return sum(i.remaining or 0 for i in self.items)

    @property
    def exact(self) -> bool:
        return all(i.exact and i.remaining is not None for i in self.items)

    @property
    def needed_disk(self) -> int:
        return self.total + max((i.peak_extra for i in self.items), default=0) + DISK_MARGIN

    @property
    def research_only(self) -> list[ModelEntry]:
        return [i.entry for i in self.items if i.entry.research_only]

    @property
    def fits(self) -> bool:
        return self.free is None or not self.items or self.needed_disk <= self.free

    def lines(self) -> list[str]:
        """Human-readable plan: one line per model, the total and the free space."""
        out = []
        for i in self.items:
            flag = " [research / non-commercial only]" if i.entry.research_only else ""
            url = f" <{i.entry.license_url}>" if i.entry.license_url else ""
            found = "  (on disk already: verified, then linked)" if i.remaining == 0 else ""
            out.append(f"  {i.entry.name:32} {human_size(i.remaining, i.exact):>10}  licence: {i.entry.license}"
                       f"{flag}{url}{found}")
        out.append(f"  total to download: {human_size(self.total, self.exact)}; "
                   f"free disk space in {self.folder}: {human_size(self.free)}")
        return out


def _found_locally(store, entry: ModelEntry, f, sizes: dict) -> bool:
    """A same-size copy sits in the HF cache or another app's folder (cheap: no
    hashing; the download verifies it before linking, else downloads)."""
    from .models.external import hf_cached_file

    if f.size is None:
        return False
    if entry.source == "hf" and entry.repo:
        cached = hf_cached_file(entry.repo, entry.revision, f.source or f.path)
        if cached is not None and cached.stat().st_size == f.size:
            return True
    return bool(f.sha256) and f.size in sizes


def _remaining(store, entry: ModelEntry, sizes: dict | None = None) -> tuple[int | None, bool, int]:
    """(bytes still to fetch, exact, peak extra bytes for pickle conversion)."""
    st = store.status(entry.name)
    missing = set(st.missing)
    todo, exact, peak = 0, True, 0
    for f in entry.files:
        if (f.convert_to or f.path) not in missing and not st.problems:
            continue
        if sizes is not None and _found_locally(store, entry, f, sizes):
            continue
        size = f.planned_size
        if size is None:
            return None, False, 0
        exact = exact and f.size is not None
        todo += size
        if f.convert_to:
            peak = max(peak, size)
    return todo, exact, peak


def free_space(folder: Path) -> int | None:
    """Free bytes on the filesystem that holds `folder` (or its nearest existing parent)."""
    p = Path(folder).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def missing_models(store, names) -> list[str]:
    """The models of `names` that are not ready to load (demo mode builds its packs: none)."""
    if store.demo:
        return []
    return [n for n in names if not store.status(n).ok]


def plan(store, names) -> DownloadPlan:
    """What fetching `names` would download here: sizes, licences, free space."""
    from .models.external import files_by_size

    p = DownloadPlan(folder=store.root, free=free_space(store.root))
    sizes = files_by_size(store.settings) if not store.demo else {}
    for n in _unique(names):
        entry = store.entry(n)
        if not store.demo and store.status(n).ok:
            p.present.append(n)
            continue
        remaining, exact, peak = _remaining(store, entry, sizes) if not store.demo else (0, True, 0)
        p.items.append(PlanItem(entry, remaining, exact, peak))
    return p


def check_disk(p: DownloadPlan) -> None:
    from .errors import DownloadError

    if not p.fits:
        raise DownloadError(
            f"not enough free disk space in {p.folder}: the download needs {human_size(p.needed_disk)} "
            f"({human_size(p.total, p.exact)} of models plus room to convert and a margin), "
            f"{human_size(p.free)} is free; free some space or choose another folder with --models-dir."
        )


# ---- one error for everything a request lacks ------------------------------------------------
class MissingModels(ModelMissing):
    """Several models are missing; `models` names them all and `command` fetches them."""

    def __init__(self, message: str, models: list[str], command: str, choice: tuple[str, ...] = (),
                 ui_message: str | None = None):
        super().__init__(message)
        self.models = models
        self.command = command
        self.choice = choice
        self.ui_message = ui_message or message  # the web UI's wording: its download card and Models tab


def missing_error(store, missing: list[str], choice: tuple[str, ...] = ()) -> MissingModels:
    entries = [store.entry(n) for n in missing]
    sizes = [e.planned_size for e in entries]
    listed = ", ".join(f"{e.name} ({human_size(*s)})" for e, s in zip(entries, sizes))
    total = sum(s[0] or 0 for s in sizes)
    research = any(e.research_only for e in entries)
    command = download_command(() if choice else missing, choice, accept_license=research)
    note = " (--accept-license accepts the research-only licences)" if research else ""
    in_all = human_size(total, all(s[1] for s in sizes))
    bundle = f" (bundle {' '.join(choice)})" if choice else ""
    return MissingModels(
        f"{len(missing)} model(s) needed here are not downloaded: {listed}; {in_all} in all. "
        f"Get them with `{command}`{note}, or in the web UI's Models tab.",
        missing, command, choice,
        ui_message=(f"Models needed first: {listed}; {in_all} in all. Download them with the card at the top "
                    f"of the Portrait tab or in the Models tab{bundle}, or run `{command}`."),
    )


def require(store, names, choice: tuple[str, ...] = ()) -> None:
    """Raise one `MissingModels` naming every model of `names` that is not ready."""
    missing = missing_models(store, names)
    if missing:
        raise missing_error(store, missing, choice)


def require_for_request(req, settings, store) -> None:
    if store.demo:
        return
    names = request_models(req, settings, store)
    missing = missing_models(store, names)
    if not missing:
        return
    choice: tuple[str, ...] = ()
    if req.method != "none" and set(missing) <= set(method_models(req.method, settings)):
        choice = (req.method,)
    raise missing_error(store, missing, choice)


def _unique(names) -> list[str]:
    return list(dict.fromkeys(names))


# ---- progress of a running download (read from the disk, so any downloader is covered) -----------
@dataclass
class FileProgress:
    model: str
    path: str
    done: int
    size: int | None  # planned bytes (None: unknown)

    @property
    def finished(self) -> bool:
        return self.size is not None and self.done >= self.size


def _bytes_on_disk(store, entry: ModelEntry, f) -> tuple[int, bool]:
    """(bytes of `f` on disk now, placed and pinned)."""
    folder = store.folder(entry.name)
    pins = store.pins(entry.name)
    for rel in filter(None, (f.convert_to, f.path)):
        p = folder / rel
        if rel in pins and p.is_file():
            return (f.planned_size or p.stat().st_size), True
    part = folder / (f.path + ".part")
    if part.is_file():
        return part.stat().st_size, False
    if entry.source == "hf" and entry.repo:  # huggingface_hub's own partial file
        from .models.store import HF_CACHE_DIR

        blobs = store.root / HF_CACHE_DIR / f"models--{entry.repo.replace('/', '--')}" / "blobs"
        partial = [b.stat().st_size for b in blobs.glob("*.incomplete")] if blobs.is_dir() else []
        if partial:
            return max(partial), False
    return 0, False


def download_progress(store, plan: DownloadPlan) -> list[FileProgress]:
    """Per file of the plan: bytes on disk now against its planned size."""
    out = []
    for item in plan.items:
        for f in item.entry.files:
            done, placed = _bytes_on_disk(store, item.entry, f)
            size = f.planned_size
            out.append(FileProgress(item.entry.name, f.path, (size or done) if placed else done, size))
    return out


def bundle_rows(store, settings) -> list[tuple[str, str, str, str]]:
    """(bundle, models, total size, still to download) for every bundle choice: the
    table `models list` prints and the web UI's Models tab shows."""
    rows = []
    for choice in bundle_choices():
        names = choice_models([choice], settings, store.catalog)
        sizes = [store.entry(n).planned_size for n in names]
        total = human_size(sum(s[0] or 0 for s in sizes), all(s[1] for s in sizes))
        todo = plan(store, names)
        rows.append((choice, ", ".join(names), total, human_size(todo.total, todo.exact)))
    return rows
