"""Speed modes: `quality` (the request's own sampler/steps/cfg), `fast` (~8 steps)
and `turbo` (~4 steps), each a published distilled SDXL LoRA run with the
scheduler and guidance its authors require.

Rules:
- A mode fills `steps`, `sampler` and `cfg` only where the request did not set
  them (pydantic's `model_fields_set`), like a method's reference recipe; the
  filled request is what runs and what the recipe records, so a replay is exact.
- A value the request set itself is checked against the mode: a sampler the
  distilled model was not trained for, or a cfg/steps outside the range its
  authors give, is a `BadInput` naming the field and the range. (The SDXL default
  "leading" spacing, for one, starts Lightning at t=751 instead of 999.)
- The LoRA is a named peft adapter in the engine's LoRA bookkeeping
  (`LoraManager.active_weights`), never toggled with
  `disable_lora()`/`enable_lora()`: those switch off *every* adapter, FaceID's
  own attention LoRA (`faceid_0`) too. In quality mode the adapter, once
  loaded, stays resident at weight 0 and adds exactly nothing.
- Identity scales do not change with the mode. That is what the reference demos
  do: InstantID's demo keeps IdentityNet 0.8 and the adapter 0.8 when its LCM
  toggle is on (InstantID gradio_demo/app.py), and PuLID v1 keeps id_scale 0.8
  on its 4-step SDXL-Lightning base (ToTheBeginning/PuLID app.py). A user who
  finds the face weaker at cfg 1 can raise cfg within the mode's range (PuLID
  runs Lightning at 1.2) or the scales.
- With cfg <= 1 diffusers drops the unconditional branch (half the UNet work);
  the identity methods follow the same `cfg > 1` rule for their embeddings.
- The LoRAs are SDXL LoRAs. An SD1.5 method whose authors publish a few-step
  mode declares it (`speed_modes` on the method class), and that mode replaces
  the SDXL one for it: Arc2Face's `turbo` is its README's LCM-LoRA mode
  (latent-consistency/lcm-lora-sdv1-5, LCMScheduler, 2 steps, guidance 1.0).
  Other SD1.5 uses (W+, Arc2Face `fast`) run in quality mode only and say so.

Why these two LoRAs (licence, then public evidence with identity adapters):
- turbo = SDXL-Lightning 4-step LoRA (ByteDance/SDXL-Lightning, openrail++):
  PuLID v1, an identity adapter, is built on the same 4-step Lightning
  distillation; Fooocus ships it as its "Lightning" mode. Euler trailing, cfg 1
  (the card says cfg 0, i.e. no guidance; Fooocus runs it at 1).
- fast = LCM-LoRA SDXL (latent-consistency/lcm-lora-sdxl, openrail++): the
  official InstantID demo's LCM toggle runs it with IdentityNet and the face
  adapter (LCMScheduler, cfg 1.5, 5 steps; we take 8, the top of the card's
  2-8 range, for the "fast" balance). cfg 1.5 keeps the negative branch, which
  the identity adapters' unconditional embeddings use.
- Not chosen: DMD2 (cc-by-nc-4.0: non-commercial), Hyper-SD (RAIL++-M, but no
  public report with FaceID/InstantID; its 8-step CFG LoRA doubles the UNet work),
  TCD (MIT; public evidence only for plain IP-Adapter, diffusers' docs). The
  `tcd`, `ddim_trailing` samplers exist for users who load those as user LoRAs.
- No public statement covers FaceID Plus v2 with any few-step LoRA
  (tencent-ailab/IP-Adapter#351 reports trouble with a Lightning *base*); FaceID
  runs in both modes and the README says this evidence is missing.
"""

from __future__ import annotations

from typing import Literal

from .errors import BadInput
from .types import SpeedMode  # the type sits below the identity methods, which declare their own modes

SpeedName = Literal["quality", "fast", "turbo"]
SPEED_NAMES: tuple[str, ...] = ("quality", "fast", "turbo")

SPEED_MODES: dict[str, SpeedMode] = {
    "quality": SpeedMode("quality", "Quality", "the sampler, steps and cfg you choose (25-32 steps in the presets)"),
    "fast": SpeedMode(
        "fast", "Fast", "LCM-LoRA SDXL, LCM sampler, 8 steps, cfg 1.5",
        lora="lcm-lora-sdxl", lora_file="pytorch_lora_weights.safetensors",
        steps=8, steps_range=(2, 12), sampler="lcm", samplers=("lcm",),
        cfg=1.5, cfg_range=(1.0, 2.0),
    ),
    "turbo": SpeedMode(
        "turbo", "Turbo", "SDXL-Lightning 4-step LoRA, Euler trailing, 4 steps, no CFG",
        lora="sdxl-lightning-4step-lora", lora_file="sdxl_lightning_4step_lora.safetensors",
        steps=4, steps_range=(2, 8), sampler="euler_trailing",
        samplers=("euler_trailing", "dpmpp_2m_trailing", "ddim_trailing"),
        cfg=1.0, cfg_range=(1.0, 2.0),
    ),
}


def get_mode(name: str) -> SpeedMode:
    try:
        return SPEED_MODES[name]
    except KeyError:
        raise BadInput(f"speed {name!r} is unknown; choose one of: {', '.join(SPEED_NAMES)}.") from None


def mode_for(name: str, method: str | None = None) -> SpeedMode:
    """Speed mode `name` for identity method `method`: the method's own published
    few-step mode where it declares one (`speed_modes`), else the SDXL mode."""
    mode = get_mode(name)
    if method and method != "none":
        from .identity import get_method_class

        try:
            own = getattr(get_method_class(method), "speed_modes", None) or {}
        except BadInput:  # an unknown method is reported where the request is checked
            return mode
        return own.get(name, mode)
    return mode


def apply_speed_defaults(req):
    """`req` with the mode's steps/sampler/cfg where the request did not set them."""
    mode = mode_for(req.speed, getattr(req, "method", None))
    if mode.lora is None:
        return req
    wanted = {"steps": mode.steps, "sampler": mode.sampler, "cfg": mode.cfg}
    unset = {k: v for k, v in wanted.items() if k not in req.model_fields_set}
    return req.model_copy(update=unset) if unset else req


def check_speed(req, family: str, method_cls=None) -> None:
    """The request fits its speed mode (after `apply_speed_defaults`); one line naming
    the field and the allowed values otherwise. A method whose own UNet is already
    few-step distilled (`few_step`, e.g. PuLID v1 on SDXL-Lightning) takes no
    speed LoRA on top."""
    mode = mode_for(req.speed, getattr(req, "method", None))
    if mode.lora is None:
        return
    if getattr(method_cls, "few_step", False):
        raise BadInput(f"speed {mode.name!r}: method {req.method!r} already runs a few-step distilled UNet "
                       f"({req.steps} steps by default); use speed 'quality'.")
    if family != mode.family:
        raise BadInput(f"speed {mode.name!r} uses an {mode.family.upper()} LoRA ({mode.lora}); method "
                       f"{req.method!r} on base_model {req.base_model!r} is {family.upper()}: use speed 'quality'.")
    if req.sampler not in mode.samplers:
        raise BadInput(f"field sampler: speed {mode.name!r} ({mode.lora}) needs sampler "
                       f"{' or '.join(repr(s) for s in mode.samplers)}, not {req.sampler!r}.")
    lo, hi = mode.steps_range
    if not lo <= req.steps <= hi:
        raise BadInput(f"field steps: speed {mode.name!r} runs {lo} to {hi} steps, not {req.steps}.")
    clo, chi = mode.cfg_range
    if not clo <= req.cfg <= chi:
        raise BadInput(f"field cfg: speed {mode.name!r} needs cfg from {clo:g} to {chi:g} "
                       f"(1 = no guidance, the fastest), not {req.cfg:g}.")


def speed_lora(store, name: str, method: str | None = None):
    """(path, adapter name) of mode `name`'s LoRA (downloaded/built by the store), or None."""
    mode = mode_for(name, method)
    if mode.lora is None:
        return None
    store.ensure(mode.lora)
    return store.file_path(mode.lora, mode.lora_file), mode.adapter


def speed_recipe(store, name: str, method: str | None = None) -> dict:
    """What the PNG recipe records about the mode (its LoRA by catalog name and hash)."""
    mode = mode_for(name, method)
    if mode.lora is None:
        return {"mode": name}
    from .outputs import model_hash

    return {"mode": name, "lora": mode.lora, "sha256": model_hash(store, mode.lora)}


def describe_modes() -> str:
    """One line per mode (CLI help, README)."""
    return "; ".join(f"{m.name}: {m.help}" for m in SPEED_MODES.values())


TUNED_FIELDS = ("steps", "sampler", "cfg")


def switch_speed(data: dict, speed: str, user_set=()) -> dict:
    """Request fields `data` (from a preset, a recipe, a job file's defaults) moved
    to `speed`: when the mode changes, the steps/sampler/cfg that came with the
    old mode are dropped, so the new mode fills them, except those in `user_set`
    (given by the user next to the speed, which then must fit the mode)."""
    get_mode(speed)
    out = dict(data)
    if out.get("speed", "quality") != speed:
        for f in TUNED_FIELDS:
            if f not in user_set:
                out.pop(f, None)
    out["speed"] = speed
    return out
