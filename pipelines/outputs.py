"""Writing generated images: file naming inside the output folder, the recipe, and
the identity card that lets `generate --recipe` reproduce an image exactly."""

from __future__ import annotations

import datetime as _dt
import functools
from pathlib import Path

from . import __version__
from .paths import sanitize_name
from .samplers import SAMPLER_TITLES
from .settings import DEMO_BANNER

RECIPE_VERSION = 1


def model_hash(store, name: str) -> str | None:
    """The sha256 of a model's main weight file (its largest pinned file), as the
    store verified and pinned it; None when nothing is pinned yet."""
    user = store.user_checkpoints()
    if name in user:
        st = user[name].stat()
        return _file_sha256(str(user[name]), st.st_size, st.st_mtime_ns)
    records = store.pins(name)
    if not records:
        return None
    best = max(records.values(), key=lambda r: r.get("size", 0))
    return best.get("sha256")


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hash a (multi-GB) user checkpoint once per content version, not per image."""
    from .models.hashing import sha256_file

    return sha256_file(path)


def model_hashes(engine, req, method) -> dict[str, str | None]:
    names = [req.base_model]
    if method is not None:
        names += list(method.required_models)
    return {n: model_hash(engine.store, n) for n in names}


def identity_card_path(settings, identity) -> Path:
    return settings.outputs_dir / "identities" / f"{identity.hash[:16]}.identity"


def ensure_identity_card(settings, identity) -> Path:
    """Save the identity once beside the outputs so a recipe can be replayed
    without detecting faces again."""
    from .faces.identity import card_path, save_card

    path = card_path(identity_card_path(settings, identity))
    if not path.exists():
        save_card(identity, path)
    return path


def build_recipe(engine, req, cond, identity, seed: int, width: int, height: int) -> dict:
    settings = engine.settings
    method = engine._method
    # the photos (and the face chosen in each) live in the identity card the recipe names
    request = req.model_dump(exclude={"out_dir", "photos", "identity_card", "face_index"})
    request.update(seed=seed, count=1, width=width, height=height)
    recipe = {
        "app": "likeness",
        "app_version": __version__,
        "recipe_version": RECIPE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "demo": settings.demo,
        "method": req.method,
        "seed": seed,
        "sampler": req.sampler,
        "steps": req.steps,
        "cfg": req.cfg,
        "width": width,
        "height": height,
        "prompt": req.prompt + cond.prompt_suffix,
        "negative": req.negative,
        "base_model": req.base_model,
        "models": model_hashes(engine, req, method),
        "method_details": cond.recipe,
        "device": engine.device,
        "dtype": str(engine.dtype).replace("torch.", ""),
        "request": request,
    }
    if settings.demo:
        recipe["note"] = DEMO_BANNER
    if identity is not None:
        card = ensure_identity_card(settings, identity)
        recipe["identity"] = {
            "hash": identity.hash,
            "card": str(card),
            "photos": [str(p) for p in getattr(identity, "sources", [])],
            # per used photo: faces found, the face number used (1 = the largest), its box
            "faces": [{**c.as_dict(), "file": Path(c.source).name} for c in getattr(identity, "faces", [])],
        }
    return recipe


def output_path(settings, req, seed: int, index: int) -> Path:
    base = Path(req.out_dir).expanduser() if req.out_dir else settings.outputs_dir / _dt.date.today().isoformat()
    base.mkdir(parents=True, exist_ok=True)
    stem = f"{sanitize_name(req.name_prefix, 'likeness')}-{req.method}-{seed}"
    for n in range(index, index + 10_000):
        p = base / f"{stem}-{n:03d}.png"
        if not p.exists():
            return p
    raise RuntimeError(f"too many files named {stem}-*.png in {base}")


def write_image(settings, req, image, recipe: dict, index: int) -> Path:
    from .metadata import a1111_parameters, save_png

    m = recipe["models"]
    base_hash = (m.get(req.base_model) or "")[:10] or None
    params = a1111_parameters(
        prompt=recipe["prompt"], negative=recipe["negative"], steps=recipe["steps"],
        sampler=SAMPLER_TITLES.get(recipe["sampler"], recipe["sampler"]), cfg=recipe["cfg"],
        seed=recipe["seed"], width=recipe["width"], height=recipe["height"],
        model_name=req.base_model, model_hash=base_hash,
        extra={"Likeness method": recipe["method"], **{f"Likeness {k}": v for k, v in recipe["method_details"].items()}},
    )
    path = output_path(settings, req, recipe["seed"], index)
    save_png(image, path, parameters=params, recipe=recipe, demo=settings.demo)
    return path
