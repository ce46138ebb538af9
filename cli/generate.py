"""`launch.py generate`: portraits from photos (or an identity card) and a prompt."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.identity import method_names


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate portraits of a person")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--photo", action="append", default=[], metavar="FILE", help="a photo of the person (repeatable)")
    p.add_argument("--face-index", action=FaceIndexAction, type=int, metavar="N",
                   help="in a photo with several faces, use face N of the --photo just before it: faces are "
                        "numbered largest first by box area, 1 (the default) is the largest; the output "
                        "says how many faces each photo has")
    src.add_argument("--identity", metavar="CARD", help="a saved identity card instead of photos")
    p.add_argument("--recipe", metavar="PNG",
                   help="reproduce the image a Likeness PNG was made from (its card or photos are looked up "
                        "by name and hash beside the PNG, in outputs/identities or here; --photo/--identity "
                        "give them instead)")
    p.add_argument("--preset", metavar="NAME", help="start from a portrait preset (`presets list`); --prompt then "
                   "describes the subject and other flags override the preset")
    ignoring = [n for n in method_names() if _replaces_prompt(n)]
    p.add_argument("--prompt", help="what to make" + (f" (ignored by {', '.join(ignoring)}: the face is the "
                                                      "whole prompt)" if ignoring else ""))
    p.add_argument("--negative")
    p.add_argument("--method", choices=method_names(include_none=True))
    p.add_argument("-n", "--count", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg", type=float)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--sampler")
    p.add_argument("--speed", choices=["quality", "fast", "turbo"],
                   help="quality: your sampler/steps/cfg; fast: LCM-LoRA, 8 steps; turbo: SDXL-Lightning, "
                        "4 steps (SDXL methods; fills steps/sampler/cfg you do not give)")
    p.add_argument("--scale", type=float, help="identity adapter scale")
    p.add_argument("--s-scale", type=float, help="FaceID Plus v2 face-structure weight")
    p.add_argument("--identitynet-scale", type=float, help="InstantID IdentityNet conditioning scale")
    p.add_argument("--enhance-face-region", action=argparse.BooleanOptionalAction, default=None,
                   help="InstantID: keep IdentityNet and the face attention to the face box, as the official "
                        "demo's 'Enhance non-face region' (default on)")
    p.add_argument("--faceid-lora-weight", type=float, metavar="W",
                   help="FaceID attention-LoRA weight (default: fades with --scale below 0.8; 1 = the reference)")
    p.add_argument("--faceid-crop-channels", choices=["rgb", "bgr"],
                   help="channel order of the face crop fed to CLIP (default rgb; bgr = IP-Adapter's model card)")
    p.add_argument("--pulid-num-zero", type=int, metavar="N",
                   help="PuLID: zero tokens added to the ID tokens, 0-80 (default 20; more = more editable)")
    p.add_argument("--pulid-ortho", choices=["off", "v1", "v2"],
                   help="PuLID orthogonal mixing (default v2; v1 with 16 zero tokens = its 'extremely style')")
    p.add_argument("--pose", metavar="NAME|FILE", help="pose template name, or a .json template / reference .png photo")
    p.add_argument("--pose-scale", type=float, help="pose ControlNet conditioning scale")
    p.add_argument("--restore", choices=["none", "gfpgan", "codeformer"], help="face restoration")
    p.add_argument("--restore-strength", type=float, help="blend of the restored face, 0-1")
    p.add_argument("--codeformer-fidelity", type=float, help="CodeFormer fidelity weight w, 0-1")
    p.add_argument("--face-detail", action=argparse.BooleanOptionalAction, default=None,
                   help="re-generate each face at a higher resolution and paste it back (before restore)")
    p.add_argument("--face-detail-strength", type=float, metavar="D", help="face-detail denoise, 0.05-1 (0.4)")
    p.add_argument("--face-detail-keep-better", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the image before the face-detail pass when its likeness score is higher")
    p.add_argument("--upscale", type=float, metavar="X", help="upscale the output by 1.5, 2 or 4")
    p.add_argument("--upscaler", choices=["realesrgan-x4plus", "4x-ultrasharp"],
                   help="upscaler model (4x-ultrasharp is non-commercial: --accept-license)")
    p.add_argument("--hires", action=argparse.BooleanOptionalAction, default=None,
                   help="img2img pass over the upscaled image (same identity conditioning and seed)")
    p.add_argument("--hires-strength", type=float, metavar="S", help="hires pass denoise, 0.05-0.8 (0.3)")
    p.add_argument("--template", metavar="NAME|FILE",
                   help="put the person in this photo: a template name (`assets/templates`, ./templates) or a photo")
    p.add_argument("--template-face", type=int, metavar="N", help="which face of the template (1 = the largest)")
    p.add_argument("--template-strength", type=float, metavar="D", help="denoise of the template's face, 0.05-1")
    p.add_argument("--photo-2", action="append", default=[], metavar="FILE", dest="photo_2",
                   help="a photo of a second person (repeatable): two people, each in a layout box")
    p.add_argument("--identity-2", metavar="CARD", help="the second person's identity card instead of photos")
    p.add_argument("--layout", metavar="NAME|FILE", help="two-person layout (assets/poses/layouts; "
                   "default two-side-by-side)")
    p.add_argument("--edit", action="append", default=[], metavar="NAME=STRENGTH",
                   help="W+ attribute edit, e.g. age=+2 or lipstick=+1 (repeatable; method wplus; "
                        "`launch.py wplus edits` lists all)")
    p.add_argument("--base-model", help="catalog name or a registered single-file checkpoint")
    p.add_argument("--vae", choices=["auto", "base", "fp16-fix", "ft-mse"],
                   help="VAE: auto, the base's own, SDXL fp16-fix, or SD1.5 sd-vae-ft-mse (W+ default: ft-mse)")
    p.add_argument("--freeu", action=argparse.BooleanOptionalAction, default=None,
                   help="FreeU on the SD1.5 UNet with the W+ demo's values (W+ default: on)")
    p.add_argument("--lora", action="append", default=[], metavar="NAME[:WEIGHT]",
                   help="a LoRA from the loras folder, weight default 1 (repeatable)")
    p.add_argument("--keep", type=int, metavar="K",
                   help="best-of-N: keep the K images that look most like the person, delete the rest")
    p.add_argument("--rejects", action="store_true",
                   help="with --keep: move the other images into a rejects/ folder instead of deleting them")
    p.add_argument("--out", metavar="DIR", help="output folder (default: outputs/<date>)")
    p.add_argument("--save-identity", metavar="CARD", help="also save the analysed identity as a card")
    show_request_defaults(p)
    p.set_defaults(func=cmd_generate)


def show_request_defaults(parser) -> None:
    """Append each request field's default to its option's help (the defaults
    live in `GenerateRequest`; a method's or a preset's recipe may fill an unset
    field differently, as the help of `--method` and `--preset` says)."""
    from pipelines.requests import GenerateRequest

    fields = GenerateRequest.model_fields
    for action in parser._actions:
        field = _FIELDS.get(action.dest)
        if field is None or field not in fields or fields[field].is_required():
            continue
        default = fields[field].get_default(call_default_factory=True)
        if default is None or default == "" or action.help == argparse.SUPPRESS:
            continue
        if isinstance(default, bool):
            default = "on" if default else "off"
        action.help = f"{action.help or ''} (default: {default})".strip()


class StepProgress:
    """Sampling progress of `generate` on stderr: a tqdm bar with the ETA on a
    terminal, plain lines (about every tenth of the steps) otherwise, as batch."""

    def __init__(self, stream, count: int, now=None):
        import time

        self.stream, self.count = stream, max(1, count)
        self.bar = None
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.t0 = None
        self.now = now or time.monotonic

    def __call__(self, info: dict) -> None:
        steps, step, index = int(info.get("steps") or 1), int(info.get("step") or 0), int(info.get("image_index") or 0)
        total, done = steps * self.count, min(index * steps + step, steps * self.count)
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=self.stream, unit="step", desc="generate", leave=False)
            self.bar.update(done - self.bar.n)
            return
        now = self.now()
        if self.t0 is None:  # timed from the first step's end: model loading is not sampling
            self.t0 = now
        every = max(1, steps // 10)
        if step % every == 0 or step == steps:
            eta = (now - self.t0) / max(1, done - 1) * (total - done) if done > 1 else None
            eta_text = f", about {eta:.0f}s left" if eta is not None else ""
            print(f"image {index + 1}/{self.count}: step {step}/{steps}{eta_text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_FIELDS = {
    "prompt": "prompt", "negative": "negative", "method": "method", "count": "count", "seed": "seed",
    "steps": "steps", "cfg": "cfg", "width": "width", "height": "height", "sampler": "sampler",
    "scale": "scale", "s_scale": "s_scale", "identitynet_scale": "identitynet_scale",
    "enhance_face_region": "enhance_face_region", "faceid_lora_weight": "faceid_lora_weight",
    "faceid_crop_channels": "faceid_crop_channels",
    "pulid_num_zero": "pulid_num_zero", "pulid_ortho": "pulid_ortho",
    "base_model": "base_model", "pose": "pose", "pose_scale": "pose_scale", "restore": "restore",
    "restore_strength": "restore_strength", "codeformer_fidelity": "codeformer_fidelity",
    "vae": "vae", "freeu": "freeu",
    "face_detail": "face_detail", "face_detail_strength": "face_detail_strength",
    "face_detail_keep_better": "face_detail_keep_better", "upscale": "upscale", "upscaler": "upscaler",
    "hires": "hires", "hires_strength": "hires_strength",
    "template": "template", "template_face": "template_face", "template_strength": "template_strength",
    "identity_2": "identity_card_2", "layout": "layout",
}


class FaceIndexAction(argparse.Action):
    """`--photo FILE --face-index N`: the face number applies to the --photo
    given just before it (argparse handles options in command-line order)."""

    def __call__(self, parser, namespace, values, option_string=None):
        photos = getattr(namespace, "photo", None) or []
        if not photos:
            parser.error(f"{option_string} {values}: put it right after the --photo FILE it applies to")
        chosen = dict(getattr(namespace, self.dest, None) or {})
        if photos[-1] in chosen:
            parser.error(f"{option_string} is given twice for --photo {photos[-1]}")
        chosen[photos[-1]] = values
        setattr(namespace, self.dest, chosen)


def request_from_args(args, settings) -> dict:
    from pipelines.errors import BadInput

    data: dict = {}
    if args.out:
        from pipelines.outputs import check_output_dir

        check_output_dir(args.out, "--out")
    if args.recipe:
        data.update(recipe_request(args.recipe, settings, need_identity=not (args.photo or args.identity)))
    given = {field: v for arg, field in _FIELDS.items() if (v := getattr(args, arg, None)) is not None}
    speed = getattr(args, "speed", None)
    preset = getattr(args, "preset", None)
    from pipelines.speed import TUNED_FIELDS, switch_speed

    if preset:
        from pipelines.presets import apply_preset, user_presets_dir

        given.pop("prompt", None)  # with a preset, --prompt is the subject
        if speed:
            given["speed"] = speed
        fields = apply_preset(preset, settings.profile, subject=args.prompt, overrides=given,
                              user_dir=user_presets_dir(settings))
        # the preset's steps/sampler/cfg replace a replayed recipe's, also those its speed switch dropped
        data = {k: v for k, v in data.items() if k not in TUNED_FIELDS} | fields
    else:
        data.update(given)
        if speed:  # a replayed recipe (or the defaults) moved to another speed
            data = switch_speed(data, speed, {f for f in TUNED_FIELDS if f in given})
    if args.photo:
        data.pop("identity_card", None)
        data["photos"] = list(args.photo)
        data.pop("face_index", None)  # a replay's recorded faces name the recipe's photos, not these
        if getattr(args, "face_index", None):
            data["face_index"] = dict(args.face_index)
    if getattr(args, "photo_2", None):
        data.pop("identity_card_2", None)
        data["photos_2"] = list(args.photo_2)
    if getattr(args, "edit", None):
        data["edits"] = list(args.edit)
    if args.identity:
        data.pop("photos", None)
        data["identity_card"] = args.identity
    if isinstance(data.get("pose"), str) and data["pose"].lower().endswith(".json"):
        from pipelines.imageio import regular_file

        regular_file(Path(data["pose"]).expanduser(), f"pose file {data['pose']}", max_bytes=5_000_000)
    if args.out:
        data["out_dir"] = args.out
    if getattr(args, "lora", None):
        data["loras"] = [_lora_spec(text) for text in args.lora]
    if args.keep is not None:
        data["keep"] = args.keep
    if args.rejects:
        if args.keep is None:
            raise BadInput("--rejects needs --keep K (it moves the images best-of-N did not keep).")
        data["rejects"] = True
    if "prompt" not in data and _replaces_prompt(data.get("method")):
        data["prompt"] = "(ignored: the method conditions on the face only)"
    if "prompt" not in data:
        raise BadInput("--prompt is required (or --preset NAME, or --recipe PNG).")
    return data


def _replaces_prompt(method: str | None) -> bool:
    """Whether `method` ignores the prompt (Arc2Face): --prompt is then optional."""
    from pipelines.identity import get_method_class

    return method not in (None, "none") and get_method_class(method).replaces_prompt


# Request fields only the local user sets: where output goes and what it is called,
# which local files are read, and best-of-N (a replay makes one image).
RECIPE_LOCAL_ONLY = ("out_dir", "name_prefix", "photos", "identity_card", "keep", "rejects")


def recipe_request(png, settings, need_identity: bool = True) -> dict:
    """The request stored in a Likeness PNG, validated like any request, for a
    replay: fields only the local user may set are dropped, the count is 1 (more
    with -n), and the identity is found by name and content hash (see
    `outputs.find_recipe_identity`). A malformed recipe is a `BadInput`."""
    from pipelines.errors import BadInput
    from pipelines.metadata import read_recipe
    from pipelines.outputs import find_recipe_identity
    from pipelines.requests import GenerateRequest, validate_request

    recipe = read_recipe(png)

    def damaged(why: str) -> BadInput:
        return BadInput(f"{png}: damaged recipe: {why}; use another image.")

    request = recipe.get("request")
    if not isinstance(request, dict):
        raise damaged("'request' is missing or not an object")
    data = {k: v for k, v in request.items() if k not in RECIPE_LOCAL_ONLY}
    # a field the recipe lacks is younger than the recipe: the image was made with
    # that field's default, so replay with it (not with a method's recipe default)
    for name, f in GenerateRequest.model_fields.items():
        if name not in request and name not in RECIPE_LOCAL_ONLY and not f.is_required():
            data[name] = f.get_default(call_default_factory=True)
    data["count"] = 1
    if isinstance(data.get("pose"), str) and ("/" in data["pose"] or "\\" in data["pose"]):
        data["pose"] = Path(data["pose"]).name  # never a path chosen by the file
    ident = recipe.get("identity")
    if ident is not None and not isinstance(ident, dict):
        raise damaged("'identity' is not an object")
    probe = dict(data)
    if ident or not need_identity:
        probe["identity_card"] = "card"  # stands in for the card found below (or --photo/--identity)
    if (recipe.get("method_details") or {}).get("people"):
        probe["identity_card_2"] = "card"  # person 2's card, found below
    try:
        validate_request(GenerateRequest, probe, "request")
    except BadInput as exc:
        raise damaged(str(exc).rstrip(".")) from exc
    if ident and need_identity:
        data.update(find_recipe_identity(png, ident, settings))
    second = ((recipe.get("method_details") or {}).get("people") or {}).get("identity_2")
    if isinstance(second, dict) and need_identity:  # two people: person 2's card, found the same way
        data.update({f"{k}_2": v for k, v in find_recipe_identity(png, second, settings).items()})
    pose = data.get("pose")
    if isinstance(pose, str) and "." in pose:  # a pose file, recorded by name: look beside the PNG first
        from pipelines.outputs import _matching, recipe_search_folders

        found = _matching(recipe_search_folders(png, settings), pose, None)
        if found is not None:
            data["pose"] = str(found)
    return data


def _lora_spec(text: str) -> dict:
    from pydantic import ValidationError

    from pipelines.errors import BadInput
    from pipelines.requests import LoraSpec

    try:
        return LoraSpec.parse(text).model_dump()
    except ValidationError as exc:
        raise BadInput(f"--lora {text!r}: {exc.errors()[0]['msg']}.") from exc
    except ValueError as exc:
        raise BadInput(f"--lora: {exc}.") from exc


def cmd_generate(args, settings) -> int:
    from pipelines.engine import Engine
    from pipelines.errors import escape_controls  # file names are echoed, never interpreted by the terminal
    from pipelines.requests import GenerateRequest, validate_request

    req = validate_request(GenerateRequest, request_from_args(args, settings), "generate")
    engine = Engine(settings)
    progress = StepProgress(sys.stderr, req.count)
    try:
        result = engine.generate(req, on_step=progress)
    finally:
        progress.close()
    for ex in result.excluded:
        print(escape_controls(f"left out {ex.get('file')}: {ex.get('reason')}"), file=sys.stderr)
    for choice in getattr(result.identity, "group_photos", []):
        print(f"{choice.source}: {choice.note} (face box {choice.box_text()}); to use another, give "
              f"--face-index N (1-{choice.faces}) right after --photo {choice.source}", file=sys.stderr)
    if args.save_identity and result.identity is not None:
        from pipelines.faces.person import save_card

        save_card(result.identity, args.save_identity)
        print(f"identity card: {args.save_identity}", file=sys.stderr)
    from pipelines.scoring import REJECTS_DIR, describe

    if req.keep is not None and req.keep < req.count:
        where = f"moved to {REJECTS_DIR}/" if req.rejects else "deleted"
        print(f"best-of-{req.count}: kept the {req.keep} most alike; the others were {where}", file=sys.stderr)
    for warning in (result.images[0].recipe.get("method_details", {}).get("warnings", []) if result.images else []):
        print(f"warning: {warning}", file=sys.stderr)
    for img in result.images:
        if "identity" in img.recipe:
            print(f"{img.path.name}: {describe(img.recipe.get('likeness'))}", file=sys.stderr)
        print(img.path)
    return 0
