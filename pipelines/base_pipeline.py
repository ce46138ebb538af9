"""The base pipeline's set-up, as the engine keeps it resident: loaded with its
VAE (`load_base`), placed on the device (`placement_for`, `place`: offload, VAE tiling,
attention backend, compile) and seen per task through views (`build_view`).

Invariants:
- `load_base` returns a pipeline that is not yet placed; `place` is the only
  code that moves it to the device or installs offload hooks, as the `Placement`
  from `placement_for` says.
- A view holds no weight copies: it is a diffusers pipeline of the task's class
  built over the resident pipeline's own components (and the ControlNets given).
  Caching views, and dropping them when the base or the identity method changes,
  is the engine's job (`Engine.view`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import ModelError
from .models.bases import base_family, dtype_kwargs, load_base_pipeline

if TYPE_CHECKING:
    from .identity.base import ControlUnit
    from .settings import Settings
    from .vram import Placement

SD15_FT_MSE_VAE = "sd-vae-ft-mse"
COMPILED_VARIANTS = 64

# (task, SDXL?, with ControlNets?) -> the diffusers pipeline class of a view
_VIEW_CLASSES = {
    ("txt2img", True, True): "StableDiffusionXLControlNetPipeline",
    ("txt2img", False, True): "StableDiffusionControlNetPipeline",
    ("img2img", True, False): "StableDiffusionXLImg2ImgPipeline",
    ("img2img", False, False): "StableDiffusionImg2ImgPipeline",
    ("img2img", True, True): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("img2img", False, True): "StableDiffusionControlNetImg2ImgPipeline",
    ("inpaint", True, False): "StableDiffusionXLInpaintPipeline",
    ("inpaint", False, False): "StableDiffusionInpaintPipeline",
    ("inpaint", True, True): "StableDiffusionXLControlNetInpaintPipeline",
    ("inpaint", False, True): "StableDiffusionControlNetInpaintPipeline",
}


def load_base(store, base_name: str, vae: str, dtype):
    """Base model `base_name` in `dtype` with the VAE `vae` asks for: "ft-mse"
    (stabilityai/sd-vae-ft-mse, the W+ adapter demo's VAE, SD1.5), "fp16-fix"
    (madebyollin/sdxl-vae-fp16-fix), or "auto" (the fp16 fix for SDXL in float16,
    the base's own VAE otherwise). Not placed yet (see `place`)."""
    import diffusers
    import torch

    family = base_family(store, base_name)
    pipe = load_base_pipeline(store, base_name, dtype)
    if vae == "ft-mse":
        ft = diffusers.AutoencoderKL.from_pretrained(
            store.ensure(SD15_FT_MSE_VAE), local_files_only=True, **dtype_kwargs(dtype)
        )
        pipe.register_modules(vae=ft)
    use_fix = vae == "fp16-fix" or (vae == "auto" and family == "sdxl" and dtype == torch.float16)
    if use_fix:
        fix = diffusers.AutoencoderKL.from_pretrained(
            store.ensure("sdxl-vae-fp16-fix"), local_files_only=True, **dtype_kwargs(dtype)
        )
        pipe.register_modules(vae=fix)
    return pipe


def placement_for(pipe, settings: Settings, device: str, offload_override: str | None = None) -> Placement:
    """Where `pipe` goes, as the settings and the free VRAM now choose
    (pipelines/vram.py); `offload_override` ("model" after an out-of-memory
    retry) wins over the choice."""
    from .vram import Placement, choose_placement

    family = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd15"
    placement = choose_placement(settings, device, family)  # from the free VRAM now, unless set
    if offload_override is not None:
        placement = Placement(offload_override, True, placement.free_gb, "retry after out of memory")
    return placement


def place(pipe, placement: Placement, settings: Settings, device: str) -> None:
    """Put `pipe` on `device` as `placement` says: whole, or under model or
    sequential CPU offload, with VAE tiling when chosen; then xformers attention
    and `torch.compile` of the UNet when the settings ask."""
    on_accel = device in ("cuda", "mps")
    if placement.offload == "model" and on_accel:
        pipe.enable_model_cpu_offload(device=device)
    elif placement.offload == "sequential" and on_accel:
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if placement.vae_tiling:
        pipe.vae.enable_tiling()
    if settings.attention == "xformers" and device == "cuda":
        try:
            pipe.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # optional: SDPA stays the default
            raise ModelError(f"xformers could not be enabled ({exc}); unset LIKENESS_ATTENTION.") from exc
    if settings.compile:
        allow_compiled_variants()
        pipe.unet.compile()


def allow_compiled_variants() -> None:
    """Dynamo compiles one UNet graph per configuration it sees (each identity
    method's attention processors, each set of resident LoRA adapters) and reuses
    it when the configuration comes back; past its default limit of 8 it would
    run the UNet uncompiled without a word. The limit is raised so that every
    method x speed combination keeps its graph."""
    import torch._dynamo

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), COMPILED_VARIANTS))


def build_view(pipe, task: str, units: Sequence[ControlUnit]) -> Any:
    """A new diffusers pipeline for `task` ("txt2img", "img2img", "inpaint") over
    the components of `pipe`, with `units`' ControlNets (one model, or a list that
    diffusers wraps in a MultiControlNetModel). Its progress bar is off."""
    import diffusers

    sdxl = isinstance(pipe, diffusers.StableDiffusionXLPipeline)
    cls = getattr(diffusers, _VIEW_CLASSES[task, sdxl, bool(units)])
    comps = {k: v for k, v in pipe.components.items() if k in _init_params(cls)}
    if units:
        models = [u.model for u in units]
        comps["controlnet"] = models[0] if len(models) == 1 else models
    view = cls(**comps)
    view.set_progress_bar_config(disable=True)
    return view


def _init_params(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters) - {"self"}
