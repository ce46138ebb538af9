"""Samplers (A1111-style names → diffusers schedulers) and SDXL size buckets."""

from __future__ import annotations

from .errors import BadInput

# name -> (scheduler class name, extra config); created from the base scheduler's config
SAMPLERS: dict[str, tuple[str, dict]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpmpp_2m_sde_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    # Few-step samplers, each as the distilled model's authors run it:
    # - SDXL-Lightning (ByteDance/SDXL-Lightning model card): Euler with
    #   timestep_spacing="trailing" (4 steps: 999, 749, 499, 249; the SDXL default
    #   "leading" would give 751, 501, 251, 1, which the LoRA was not trained on).
    "euler_trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    # - Hyper-SD (ByteDance/Hyper-SD model card): DDIM, trailing.
    "ddim_trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
    # - PuLID v1 on the Lightning UNet (ToTheBeginning/PuLID pulid/pipeline.py):
    #   DPM++ 2M, trailing; diffusers 0.25 (its pin) ended at sigma_min, not 0.
    "dpmpp_2m_trailing": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "timestep_spacing": "trailing", "final_sigmas_type": "sigma_min"},
    ),
    # - LCM-LoRA (latent-consistency/lcm-lora-sdxl card; InstantID gradio_demo/app.py):
    #   LCMScheduler (4 steps: 999, 759, 499, 259).
    "lcm": ("LCMScheduler", {}),
    # - TCD-LoRA (h1t/TCD-SDXL-LoRA card): TCDScheduler, gamma/eta 0.3 passed per call.
    "tcd": ("TCDScheduler", {}),
    # k-diffusion's DPM++ 2M Karras (crowsonkb/k-diffusion sample_dpmpp_2m), as PuLID v1.1 samples
    # (ToTheBeginning/PuLID pulid/utils.py): the project's own class, pipelines/kdiffusion.py
    "kdpmpp_2m_karras": ("KDPMPP2MKarrasScheduler", {}),
}

# scheduler classes of this project (not in diffusers), by name
LOCAL_SCHEDULERS = {"KDPMPP2MKarrasScheduler": "pipelines.kdiffusion"}

# keyword arguments a sampler needs in the pipeline call (the authors' settings)
SAMPLER_CALL_KWARGS: dict[str, dict] = {"tcd": {"eta": 0.3}}

SAMPLER_TITLES = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras",
    "ddim": "DDIM",
    "unipc": "UniPC",
    "euler_trailing": "Euler (trailing)",
    "ddim_trailing": "DDIM (trailing)",
    "dpmpp_2m_trailing": "DPM++ 2M (trailing)",
    "lcm": "LCM",
    "tcd": "TCD",
    "kdpmpp_2m_karras": "DPM++ 2M Karras (k-diffusion)",
}

# SDXL training buckets (width, height), ~1 megapixel each
SDXL_BUCKETS: list[tuple[int, int]] = [
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
]
SD15_BUCKETS: list[tuple[int, int]] = [(512, 512), (512, 768), (768, 512), (576, 448), (448, 576)]


def scheduler_class(cls_name: str):
    """The scheduler class named in SAMPLERS: diffusers', or this project's own."""
    import importlib

    import diffusers

    if cls_name in LOCAL_SCHEDULERS:
        return getattr(importlib.import_module(LOCAL_SCHEDULERS[cls_name]), cls_name)
    return getattr(diffusers, cls_name)


def make_scheduler(name: str, base_config, dtype=None):
    """The sampler's scheduler from the base's scheduler config. `dtype` (the
    pipeline's torch dtype) matters to the k-diffusion samplers only: their
    sigma -> timestep map rounds sigma to the latents' dtype, as the reference."""
    try:
        cls_name, extra = SAMPLERS[name]
    except KeyError:
        raise BadInput(f"sampler {name!r} is unknown; choose one of: {', '.join(SAMPLERS)}.") from None
    if cls_name in LOCAL_SCHEDULERS and dtype is not None:
        extra = {**extra, "model_dtype": str(dtype).removeprefix("torch.")}
    return scheduler_class(cls_name).from_config(base_config, **extra)


def nearest_bucket(width: int, height: int, buckets=SDXL_BUCKETS) -> tuple[int, int]:
    aspect = width / max(height, 1)
    return min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))
