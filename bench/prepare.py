"""What bench/generate.py sets up before anything is timed: the models folder,
the engine's settings, every model either side loads (built, in demo mode, by
the store), the folders the baselines read, the photo, and the imports.

Order of a set-up (`prepare_run`):

1. the models folder: --models-dir, else $LIKENESS_MODELS_DIR, else a folder in
   the run's temp dir; --full-size builds its packs under <dir>/bench-fullsize;
2. the settings: demo mode (the store builds the packs, tiny or full-size),
   research licences accepted, and the compute settings that make the engine run
   like the plain pipeline (no offload, no VAE tiling, sdpa, no compile);
3. every model of every method and speed mode is built (`build_models`) and the
   time it took is reported apart (`build_seconds`): no timed region builds;
4. the baselines' folders come from the same store entries the engine loads, so
   both sides read the same files;
5. diffusers' and transformers' lazy imports are done once, so neither cold
   start pays for the other's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.calls import Ctx

TINY_LABEL = "tiny demo models: random weights"

# compute-relevant settings forced for the engine so it runs like the plain pipeline
ENGINE_SETTINGS = dict(offload="none", vae_tiling=False, attention="sdpa", compile=False)


@dataclass
class Prepared:
    """The result of a set-up: what the timed part of a run uses."""

    settings: object
    store: object
    device: str
    dtype: object
    label: str  # which models: tiny packs or full-size random weights
    use_fix_vae: bool
    ctx: Ctx
    build_seconds: float


def models_dir(args, work: Path) -> Path:
    given = args.models_dir or (Path(os.environ["LIKENESS_MODELS_DIR"]) if os.environ.get("LIKENESS_MODELS_DIR")
                                else None)
    if given is None:
        return work / "models"
    return Path(given).expanduser() / "bench-fullsize" if args.full_size else Path(given).expanduser()


def build_models(store, methods: list[str], use_fix_vae: bool, speeds=()) -> list[str]:
    """Build (demo mode) every model both sides load, before anything is timed."""
    from pipelines.identity import get_method_class
    from pipelines.speed import SPEED_MODES, mode_for

    names = ["sdxl-base"] + (["sdxl-vae-fp16-fix"] if use_fix_vae else [])
    names += [SPEED_MODES[s].lora for s in speeds if SPEED_MODES[s].lora]
    for m in methods:
        if m == "none":
            continue
        cls = get_method_class(m)
        names += list(cls.required_models) + [cls.recognizer]
        if cls.base == "sd15":
            names.append("sd15-base")
        names += [mode_for(s, m).lora for s in speeds if mode_for(s, m).lora]
    names += ["buffalo_l", "antelopev2"] if any(m != "none" for m in methods) else []  # likeness scoring
    names = list(dict.fromkeys(names))
    for n in names:
        store.ensure(n)
    return names


def baseline_folders(store, methods: list[str]) -> dict[str, Path]:
    """The files each method's baseline loads, from the store entries the engine uses."""
    files: dict[str, Path] = {}
    if "faceid" in methods:
        from pipelines.identity import faceid as fid

        files.update(faceid=store.ensure(fid.MODEL), faceid_weights=store.file_path(fid.MODEL, fid.WEIGHTS),
                     image_encoder=store.ensure(fid.ENCODER) / "models" / "image_encoder")
    if "instantid" in methods:
        from pipelines.identity import instantid as iid

        files.update(instantid=store.ensure(iid.MODEL), instantid_weights=store.file_path(iid.MODEL, iid.ADAPTER))
    if "pulid" in methods:
        from pipelines.identity import pulid as pid

        files.update(pulid_weights=store.file_path(pid.WEIGHTS, pid.WEIGHTS_FILE),
                     eva_weights=store.file_path(pid.EVA, pid.EVA_FILE))
    if "arc2face" in methods:
        from pipelines.identity import arc2face as a2f

        files.update(arc2face=store.ensure(a2f.MODEL), sd15=store.ensure("sd15-base"))
    return files


def astronaut(work: Path) -> Path:
    """skimage's astronaut (one face) as a PNG in `work`, written once."""
    path = work / "astronaut.png"
    if not path.exists():
        from PIL import Image
        from skimage import data

        Image.fromarray(data.astronaut()).save(path)
    return path


def photo(args, work: Path) -> Path:
    """--photo, else skimage's astronaut written into the run's temp dir."""
    return args.photo or astronaut(work)


def prepare_run(args, work: Path) -> Prepared:
    """Steps 1-4 of a set-up (see the module docstring)."""
    import torch

    from pipelines.errors import BadInput
    from pipelines.settings import load_settings
    from pipelines.stores import open_store

    settings = load_settings(models_dir=models_dir(args, work), outputs_dir=work / "outputs",
                             loras_dir=work / "loras", device=args.device, dtype=args.dtype, demo=True,
                             accept_research_licenses=True, **ENGINE_SETTINGS)
    device = settings.resolve_device()
    dtype = settings.resolve_dtype(device)
    if args.full_size and device == "cpu" and args.device != "cpu":
        raise BadInput("--full-size runs full-size SDXL (and builds ~16 GB of random-weight models): it needs "
                       "a GPU and none was found; use --full-size --dry-run to count parameters, or "
                       "--device cpu to force it.")
    if args.full_size:
        from bench import fullsize

        catalog, label = fullsize.fullsize_catalog(), fullsize.MODELS_LABEL
    else:
        catalog, label = None, TINY_LABEL
    store = open_store(settings, catalog=catalog)
    use_fix = dtype == torch.float16  # the engine's vae="auto" rule for SDXL
    t0 = time.perf_counter()
    build_models(store, args.methods, use_fix, args.speeds)
    build_seconds = time.perf_counter() - t0

    files = baseline_folders(store, args.methods)
    ctx = Ctx(device=device, dtype=dtype, steps=args.steps, width=args.width, height=args.height, cfg=args.cfg,
              sdxl_folder=store.ensure("sdxl-base"), variant=store.entry("sdxl-base").variant,
              vae_folder=store.ensure("sdxl-vae-fp16-fix") if use_fix else None,
              photo=photo(args, work), folders=files,
              sd15_variant=store.entry("sd15-base").variant if "sd15" in files else None)
    return Prepared(settings=settings, store=store, device=device, dtype=dtype, label=label, use_fix_vae=use_fix,
                    ctx=ctx, build_seconds=build_seconds)


def preload_imports() -> None:
    """Import what either side will use, so no cold start pays for diffusers' lazy
    imports the other one already did."""
    import diffusers
    import transformers

    for name in ("StableDiffusionXLPipeline", "StableDiffusionXLControlNetPipeline", "AutoencoderKL",
                 "ControlNetModel", "UNet2DConditionModel", "EulerDiscreteScheduler"):
        getattr(diffusers, name)
    for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModelWithProjection",
                 "CLIPImageProcessor", "CLIPTokenizer"):
        getattr(transformers, name)
    import pipelines.outputs  # noqa: F401  (the engine's output path)


def warm_device(device: str, dtype) -> None:
    """Create the CUDA context and load its first kernels outside every timed region."""
    if device == "cuda":
        import torch

        torch.ones(64, 64, device="cuda", dtype=dtype).matmul(torch.ones(64, 64, device="cuda", dtype=dtype))
        torch.cuda.synchronize()
