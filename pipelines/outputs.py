"""Writing generated images: file naming inside the output folder, the recipe, and
the identity card that lets `generate --recipe` reproduce an image exactly.

A recipe travels with the PNG wherever it is shared, so it holds no local paths:
the identity card and the source photos are recorded by file name and sha256
(`identity.card`, `identity.card_sha256`, `identity.photos`), and a pose file by
its name. `find_recipe_identity` finds them again for a replay: beside the PNG,
in the outputs folder's `identities/`, or in the current folder, and only a file
whose content matches the recorded hash is used."""

from __future__ import annotations

import datetime as _dt
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import BadInput
from .paths import sanitize_name
from .profile import profile_of
from .samplers import SAMPLER_TITLES

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


def model_hashes(store, req, method) -> dict[str, str | None]:
    names = [req.base_model]
    if method is not None:
        names += list(method.required_models)
    return {n: model_hash(store, n) for n in names}


def identity_card_path(settings, identity) -> Path:
    return settings.outputs_dir / "identities" / f"{identity.hash[:16]}.identity"


def ensure_identity_card(settings, identity) -> Path:
    """Save the identity once beside the outputs so a recipe can be replayed
    without detecting faces again."""
    from .faces.person import card_path, save_card

    path = card_path(identity_card_path(settings, identity))
    if not path.exists():
        save_card(identity, path)
    return path


@dataclass(frozen=True)
class RecipeContext:
    """Where an image is made, as its recipe records it."""

    settings: Any
    store: Any
    device: str
    dtype: Any


def build_recipe(ctx: RecipeContext, method, req, cond, identity, seed: int, width: int, height: int) -> dict:
    """The recipe of one image; `method` is the identity method that made it (None: none)."""
    settings = ctx.settings
    # the photos (and the face chosen in each) live in the identity card the recipe names
    request = req.model_dump(exclude={"out_dir", "photos", "identity_card", "face_index",
                                      "photos_2", "identity_card_2", "face_index_2"})  # person 2: method_details
    request.update(seed=seed, count=1, width=width, height=height)
    if request.get("pose"):
        request["pose"] = _shareable_pose(request["pose"])
    if request.get("template"):  # a template file is recorded by its file name, as a pose file
        request["template"] = _shareable_pose(request["template"])
    details = dict(cond.recipe)
    if isinstance(details.get("pose"), dict) and details["pose"].get("pose"):
        details["pose"] = {**details["pose"], "pose": _shareable_pose(details["pose"]["pose"])}
    recipe = {
        "app": "likeness",
        "app_version": __version__,
        "recipe_version": RECIPE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "demo": profile_of(settings).demo,
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
        "models": model_hashes(ctx.store, req, method),
        "method_details": details,
        "device": ctx.device,
        "dtype": str(ctx.dtype).replace("torch.", ""),
        "request": request,
    }
    if profile_of(settings).notice:
        recipe["note"] = profile_of(settings).notice
    if identity is not None:
        card = ensure_identity_card(settings, identity)
        recipe["identity"] = {
            "hash": identity.hash,
            "card": card.name,
            "card_sha256": _stat_sha256(card),
            "photos": [{"name": Path(p).name, "sha256": _stat_sha256(p)}
                       for p in getattr(identity, "sources", [])],
            # per used photo: faces found, the face number used (1 = the largest), its box
            "faces": [{**c.as_dict(), "file": Path(c.source).name} for c in getattr(identity, "faces", [])],
        }
    return recipe


def _shareable_pose(pose: str) -> str:
    """A pose template name stays; a pose file is recorded by its file name."""
    return Path(pose).name if ("/" in pose or os.sep in pose) else pose


def _stat_sha256(path) -> str | None:
    """sha256 of a (regular, bounded) local file, cached per content version;
    None when it cannot be read (an upload already cleaned up)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    try:
        return _user_file_sha256(os.fspath(path), st.st_size, st.st_mtime_ns)
    except BadInput:
        return None


@functools.lru_cache(maxsize=256)
def _user_file_sha256(path: str, size: int, mtime_ns: int) -> str:
    from .imageio import hash_user_file

    return hash_user_file(path)


# ------------------------------------------------------------------ replay
def recipe_search_folders(recipe_png: Path | str, settings) -> list[Path]:
    """Where a replay looks for the recipe's card and photos, in order."""
    png_dir = Path(recipe_png).expanduser().resolve().parent
    outs = Path(settings.outputs_dir).expanduser()
    folders = [png_dir, png_dir / "identities", png_dir.parent / "identities", outs / "identities",
               Path.cwd()]
    seen, out = set(), []
    for f in folders:
        key = str(f)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _matching(folders: list[Path], name, sha256) -> Path | None:
    """The first regular file called `name` (a bare file name) in `folders` whose
    sha256 is `sha256` (any content when no hash was recorded)."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or "\x00" in name:
        return None
    for folder in folders:
        p = folder / name
        if not p.is_file():
            continue
        if sha256 is None or _stat_sha256(p) == sha256:
            return p
    return None


def find_recipe_identity(recipe_png: Path | str, ident: dict, settings) -> dict:
    """`{"identity_card": path}` or `{"photos": [paths]}` for a replay of a recipe's
    identity, found by name and content hash (see the module docstring). A card is
    used only when it also holds the recorded identity hash."""
    from .faces.person import load_card

    folders = recipe_search_folders(recipe_png, settings)
    card_name = ident.get("card")
    if isinstance(card_name, str):
        card_name = Path(card_name).name  # older recipes recorded a full path: only its name is used
    card = _matching(folders, card_name, ident.get("card_sha256") if isinstance(ident.get("card_sha256"), str)
                     else None)
    if card is not None:
        try:
            if ident.get("hash") in (None, load_card(card).hash):
                return {"identity_card": str(card)}
        except BadInput:
            pass
    photos = ident.get("photos")
    found: list[str] = []
    if isinstance(photos, list) and photos:
        for ph in photos:
            if isinstance(ph, dict) and isinstance(ph.get("sha256"), str):
                p = _matching(folders, ph.get("name"), ph["sha256"])
                if p is not None:
                    found.append(str(p))
    if found:
        chosen = _recorded_faces(ident.get("faces"), found)
        return {"photos": found, **({"face_index": chosen} if chosen else {})}
    where = ", ".join(str(f) for f in folders)
    raise BadInput(
        f"{recipe_png}: the recipe's identity card {card_name!r} (or its photos) was not found in {where}; "
        "put the card or the photos beside the PNG, or give --identity CARD or --photo FILE."
    )


def _recorded_faces(entries, found: list[str]) -> dict[str, int]:
    """The face chosen in each group photo (the recipe's `identity.faces`, by file
    name) for the photos found again; face 1, the default, is left out. Malformed
    entries are ignored (the request's validation bounds the numbers)."""
    by_name: dict[str, int] = {}
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict) and isinstance(e.get("file"), str) and type(e.get("face")) is int:
            by_name[e["file"]] = e["face"]
    return {p: by_name[Path(p).name] for p in found if by_name.get(Path(p).name, 1) != 1}


def check_output_dir(path: Path | str, what: str = "output folder") -> Path:
    """`path` as an output folder: an existing writable folder, or one that can be
    created (its nearest existing parent is a writable folder). Nothing is created."""
    p = Path(path).expanduser()
    if "\x00" in str(p):
        raise BadInput(f"{what} {str(p)!r} contains a NUL byte.")
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        if probe == p:
            raise BadInput(f"{what} {p} is a file, not a folder; choose a folder.")
        raise BadInput(f"{what} {p} cannot be created: {probe} is a file, not a folder.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"{what} {p} is not writable ({probe} does not allow writing); choose another folder.")
    return p


def output_path(settings, req, seed: int, index: int) -> Path:
    base = Path(req.out_dir).expanduser() if req.out_dir else settings.outputs_dir / _dt.date.today().isoformat()
    try:
        base.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        check_output_dir(base)  # names the file that is in the way
        raise BadInput(f"output folder {base} cannot be created ({exc.strerror}).") from exc
    except PermissionError as exc:
        raise BadInput(f"output folder {base} cannot be created: permission denied; choose another "
                       "folder.") from exc
    stem = f"{sanitize_name(req.name_prefix, 'likeness')}-{req.method}-{seed}"
    for n in range(index, index + 10_000):
        p = base / f"{stem}-{n:03d}.png"
        if not p.exists():
            return p
    raise RuntimeError(f"too many files named {stem}-*.png in {base}")


def write_image(settings, req, image, recipe: dict, index: int) -> Path:
    from .metadata import a1111_parameters, lora_hashes, save_png

    m = recipe["models"]
    base_hash = (m.get(req.base_model) or "")[:10] or None
    params = a1111_parameters(
        prompt=recipe["prompt"], negative=recipe["negative"], steps=recipe["steps"],
        sampler=SAMPLER_TITLES.get(recipe["sampler"], recipe["sampler"]), cfg=recipe["cfg"],
        seed=recipe["seed"], width=recipe["width"], height=recipe["height"],
        model_name=req.base_model, model_hash=base_hash,
        extra={"Lora hashes": lora_hashes(recipe["method_details"].get("loras")),
               "Likeness method": recipe["method"], **{f"Likeness {k}": v for k, v in recipe["method_details"].items()}},
    )
    path = output_path(settings, req, recipe["seed"], index)
    save_png(image, path, parameters=params, recipe=recipe, notice=profile_of(settings).notice)
    return path
