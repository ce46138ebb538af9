"""Loading a base pipeline (SDXL or SD1.5) from the model store: the one loader
the engine, the LoRA trainer and the W+ trainer share.

A base is either a catalog model (a diffusers folder, loaded with its catalog
`variant` from safetensors only) or a user's registered single-file SDXL
checkpoint, which needs only the SDXL configs and tokenizers beside it
(`sdxl-base-config`), never the 7 GB `sdxl-base` weights.

The pipeline comes back on the CPU with its progress bar off; placing it
(device, offload, VAE choice) is the caller's job. SD1.5 bases load without the
safety checker: outputs are the user's own portraits, filtered by nobody else.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import BadInput

FAMILIES = ("sdxl", "sd15")
DEFAULT_BASE = {"sdxl": "sdxl-base", "sd15": "sd15-base"}
SINGLE_FILE_CONFIG = "sdxl-base-config"  # configs + tokenizers, no weights
FAMILY_TITLES = {"sdxl": "SDXL", "sd15": "SD1.5"}
# diffusers renamed `torch_dtype` to `dtype` in 0.40 (the old name warns from
# then on; `dtype` is ignored before it)
DTYPE_KEYWORD_SINCE = (0, 40)


@lru_cache(maxsize=1)
def _dtype_keyword() -> str:
    import diffusers

    parts = []
    for p in diffusers.__version__.split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return "dtype" if tuple(parts) >= DTYPE_KEYWORD_SINCE else "torch_dtype"


def dtype_kwargs(dtype) -> dict:
    """`{"dtype": dtype}` or `{"torch_dtype": dtype}`: the keyword the installed
    diffusers reads for a `from_pretrained`/`from_single_file` dtype."""
    return {_dtype_keyword(): dtype}


def base_family(store, base_name: str) -> str:
    """"sdxl" or "sd15" for a base model name; a registered checkpoint is SDXL."""
    if base_name in store.user_checkpoints():
        return "sdxl"
    kind = store.catalog.get(base_name).kind
    if kind not in FAMILIES:
        raise BadInput(f"base_model {base_name!r} is a {kind} model, not an SDXL or SD1.5 base.")
    return kind


def check_family(store, base_name: str, family: str, purpose: str) -> None:
    """BadInput when `base_name` is not of `family` (e.g. LoRA training needs SDXL)."""
    have = base_family(store, base_name)
    if have != family:
        raise BadInput(f"base_model {base_name!r} is an {FAMILY_TITLES[have]} model; "
                       f"{purpose} needs an {FAMILY_TITLES[family]} base.")


def ensure_base(store, base_name: str) -> Path:
    """Fetch (or, in demo mode, build) what loading `base_name` reads: the
    catalog folder, or the SDXL configs a registered checkpoint needs."""
    if base_name in store.user_checkpoints():
        return store.ensure(SINGLE_FILE_CONFIG)
    return store.ensure(base_name)


def load_base_pipeline(store, base_name: str, dtype, *, family: str | None = None,
                       purpose: str = "this"):
    """The diffusers pipeline of `base_name` in `dtype`, on the CPU. `family`
    ("sdxl"/"sd15"), when given, is checked first (`purpose` names who needs it
    in the error)."""
    import diffusers

    if family is not None:
        check_family(store, base_name, family, purpose)
    family = base_family(store, base_name)
    cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
    extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    user = store.user_checkpoints()
    if base_name in user:
        config_dir = ensure_base(store, base_name)
        checkpoint = store.checked_checkpoint(base_name)  # the registered file, unchanged since
        pipe = cls.from_single_file(str(checkpoint), config=str(config_dir), local_files_only=True,
                                    **dtype_kwargs(dtype))
    else:
        entry = store.catalog.get(base_name)
        folder = ensure_base(store, base_name)
        pipe = cls.from_pretrained(folder, variant=entry.variant, local_files_only=True, use_safetensors=True,
                                   **dtype_kwargs(dtype), **extra)
    if family == "sd15" and getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    return pipe
