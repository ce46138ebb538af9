"""The Portrait tab's widgets. `PortraitWidgets.fields` maps each request widget
to its key (a `GenerateRequest` field name or a UI key, see
`app.requests_map`): handlers take and return values by key, never by
position."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from pipelines.multi_person import list_layouts
from pipelines.samplers import SAMPLER_TITLES
from pipelines.settings import Settings
from pipelines.speed import SPEED_MODES
from pipelines.templates import list_templates
from pipelines.upscale import UPSCALERS

from .requests_map import MAX_PHOTOS, NONE, UI_DEFAULTS, edit_rows, lora_names, lora_rows, size_choices

PHOTO_TYPES = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".heic"]
POSE_PREVIEWS = Path(__file__).resolve().parents[1] / "assets" / "poses" / "previews"


@dataclass
class PortraitWidgets:
    fields: dict[Any, str]  # widget -> key
    by_key: dict[str, Any]
    preset_gallery: Any
    preset_names: list[str]
    pose_gallery: Any | None
    pose_names: list[str]
    crops: Any
    photo_report: Any
    generate: Any
    cancel: Any
    status: Any
    preview: Any
    results: Any
    result_info: Any
    reuse: Any
    results_state: Any
    selected: Any
    lora_refresh: Any
    extra: dict[str, Any] = field(default_factory=dict)


def wplus_edit_names(settings: Settings) -> list[str]:
    """Every W+ edit name when the direction files are here (else none)."""
    from pipelines.stores import open_store
    from pipelines.wplus.edits import available_edit_names

    return available_edit_names(open_store(settings))


def method_choices() -> list[tuple[str, str]]:
    """(label, name) of every registered identity method, then "none"."""
    from pipelines.identity import method_choices as registered

    return registered(include_none=True)


def preset_cards(settings: Settings | None = None):
    """(name, title, PIL card) for every shipped preset, then (with `settings`)
    the user's own, whose cards are drawn on the fly."""
    from PIL import Image

    from pipelines.presets import all_presets, draw_card, preview_path, user_presets_dir

    cards = []
    for p, mine in all_presets(user_presets_dir(settings) if settings is not None else None):
        path = preview_path(p.name)
        if mine:
            img = draw_card(p)
        else:
            img = Image.open(path).convert("RGB") if path.is_file() else Image.new("RGB", (240, 300), p.colors[0])
        title = p.title if p.speed == "quality" else f"{p.title} · {p.speed}"
        cards.append((p.name, title + (" (yours)" if mine else ""), img))
    return cards


def pose_cards(settings: Settings | None = None):
    """(name, title, PIL preview or None) for every pose template: the shipped
    ones, then (with `settings`) the user's, e.g. made by `poses extract`."""
    from PIL import Image

    from pipelines.pose.templates import list_templates, user_poses_dir

    out = []
    for t in list_templates(user_poses_dir(settings) if settings is not None else None):
        path = POSE_PREVIEWS / f"{t.name}.png"
        out.append((t.name, t.title, Image.open(path).convert("RGB") if path.is_file() else None))
    return out


def build_portrait(settings: Settings) -> PortraitWidgets:
    profile = settings.profile
    d = UI_DEFAULTS
    by_key: dict[str, Any] = {}
    cards = preset_cards(settings)
    poses = pose_cards(settings)
    # Fooocus-like: the image area is at the top left, where the eye is, so a preset
    # click shows its progress and result without scrolling; inputs on the right
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=420, elem_id="image-area"):
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                # enabled (and red) only while a generation runs (app.portrait wires it)
                cancel = gr.Button("Cancel", variant="secondary", interactive=False, elem_id="cancel")
            status = gr.Markdown(elem_id="status")
            with gr.Row():
                preview = gr.Image(label="Live preview", interactive=False, height=200, width=200, format="jpeg",
                                   elem_id="live-preview", scale=1)
                results = gr.Gallery(label="Results", columns=4, height=380, format="png", interactive=False,
                                     buttons=["download", "fullscreen"], object_fit="contain", elem_id="results", scale=3)
            result_info = gr.Markdown(elem_id="result-info")
            reuse = gr.Button("Reuse these settings (selected image)", elem_id="reuse")
            by_key["prompt"] = gr.Textbox(
                label="Prompt (with a preset: describe the person, e.g. 'a woman with red hair')",
                lines=2, elem_id="prompt",
            )
            by_key["negative"] = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative")
            by_key["speed"] = gr.Radio(
                [(m.title, m.name) for m in SPEED_MODES.values()], value=d["speed"], label="Performance",
                info="; ".join(f"{m.title}: {m.help}" for m in SPEED_MODES.values()), elem_id="speed",
            )
        with gr.Column(scale=2, min_width=340):
            by_key["photos"] = gr.File(
                label=f"Photos of the person (1–{MAX_PHOTOS})", file_count="multiple", type="filepath",
                file_types=PHOTO_TYPES, elem_id="photos",
            )
            thumbs = gr.Gallery(label="Your photos", columns=6, height=110, allow_preview=False, interactive=False,
                                format="png", object_fit="cover", elem_id="photo-thumbs")
            by_key["method"] = gr.Radio(method_choices(), value=d["method"], label="Identity method", elem_id="method")
            crops = gr.Gallery(label="Detected faces (in a group photo, click the face to use)", columns=5,
                               height=150, allow_preview=False,
                               format="png", interactive=False, object_fit="contain", fit_columns=False,
                               elem_id="face-crops")
            photo_report = gr.Markdown(elem_id="photo-report")
            by_key["identity_card"] = gr.State(None)
            by_key["face_index"] = gr.State({})  # {photo: face number} chosen by a click on a face
            preset_gallery = gr.Gallery(
                value=[(img, title) for _, title, img in cards], label="Presets — one click generates",
                columns=4, height=300, allow_preview=False, format="png", interactive=False,
                object_fit="contain", elem_id="preset-gallery",
            )
            by_key["preset"] = gr.Dropdown(
                [(NONE, NONE)] + [(title, name) for name, title, _ in cards], value=d["preset"],
                label="Preset", elem_id="preset",
            )
            with gr.Row(equal_height=True):
                save_name = gr.Textbox(label="Save these settings as your preset", placeholder="my-look",
                                       scale=3, elem_id="save-preset-name")
                save_preset = gr.Button("Save preset", size="sm", scale=1, elem_id="save-preset")
    with gr.Accordion("Advanced", open=False, elem_id="advanced"):
        with gr.Row():
            by_key["size"] = gr.Dropdown(size_choices(profile), value=d["size"], label="Size bucket",
                                         allow_custom_value=True, elem_id="size")
            by_key["sampler"] = gr.Dropdown([(t, k) for k, t in SAMPLER_TITLES.items()], value=d["sampler"],
                                            label="Sampler")
            by_key["steps"] = gr.Slider(1, 150, value=d["steps"], step=1, label="Steps", elem_id="steps")
            by_key["cfg"] = gr.Slider(0, 30, value=d["cfg"], step=0.5, label="CFG scale")
        with gr.Row():
            by_key["seed"] = gr.Number(value=d["seed"], precision=0, label="Seed (-1 = random)", elem_id="seed")
            by_key["count"] = gr.Slider(1, 16, value=d["count"], step=1, label="Images")
            by_key["keep"] = gr.Slider(0, 16, value=d["keep"], step=1, label="Keep the best K (0 = all)")
        with gr.Row():
            by_key["scale"] = gr.Slider(
                0, 2, value=d["scale"], step=0.05, label="Identity adapter scale",
                info="FaceID: below 0.8 its attention LoRA fades with this scale, so 0 is the plain model "
                     "(the reference keeps the LoRA at 1.0: CLI --faceid-lora-weight 1). The face crop goes to "
                     "CLIP in RGB (the model card's example feeds BGR: --faceid-crop-channels bgr).",
            )
            by_key["s_scale"] = gr.Slider(0, 3, value=d["s_scale"], step=0.05, label="FaceID face-structure (s_scale)")
            by_key["identitynet_scale"] = gr.Slider(0, 2, value=d["identitynet_scale"], step=0.05,
                                                    label="InstantID IdentityNet scale")
            by_key["enhance_face_region"] = gr.Checkbox(
                value=d["enhance_face_region"], label="InstantID: enhance non-face region",
                info="IdentityNet and the face attention act on the face box only (the official demo's default)",
                elem_id="enhance-face-region",
            )
        with gr.Row():
            by_key["pose"] = gr.Dropdown([(NONE, NONE)] + [(t, n) for n, t, _ in poses], value=d["pose"],
                                         label="Pose template", elem_id="pose")
            by_key["pose_scale"] = gr.Slider(0, 2, value=d["pose_scale"], step=0.05, label="Pose strength")
            # as the InstantID demo and FaceChain: the pose of a person in any photo (the pose
            # detector reads it); it takes the place of a template
            by_key["pose_photo"] = gr.File(label="Reference pose photo (instead of a template)", type="filepath",
                                           file_types=PHOTO_TYPES, height=90, elem_id="pose-photo")
        pose_gallery = None
        if poses:
            pose_gallery = gr.Gallery(
                value=[(img, title) for _, title, img in poses if img is not None], label="Pose templates",
                columns=8, height=170, allow_preview=False, format="png", interactive=False,
                object_fit="contain", elem_id="pose-gallery",
            )
        with gr.Row():
            by_key["restore"] = gr.Radio(["none", "gfpgan", "codeformer"], value=d["restore"], label="Face restore")
            by_key["restore_strength"] = gr.Slider(0, 1, value=d["restore_strength"], step=0.05,
                                                   label="Restore strength")
            by_key["codeformer_fidelity"] = gr.Slider(0, 1, value=d["codeformer_fidelity"], step=0.05,
                                                      label="CodeFormer fidelity")
        with gr.Row():
            by_key["face_detail"] = gr.Checkbox(value=d["face_detail"], label="Face detail pass",
                                                info="re-generate each face at a higher resolution (ADetailer-like)",
                                                elem_id="face-detail")
            by_key["face_detail_strength"] = gr.Slider(0.05, 1, value=d["face_detail_strength"], step=0.05,
                                                       label="Face detail denoise")
            by_key["face_detail_keep_better"] = gr.Checkbox(value=d["face_detail_keep_better"],
                                                            label="Keep the more alike (before/after)")
        with gr.Row():
            by_key["upscale"] = gr.Radio([1.0, 1.5, 2.0, 4.0], value=d["upscale"], label="Upscale", elem_id="upscale")
            by_key["upscaler"] = gr.Dropdown(list(UPSCALERS), value=d["upscaler"], label="Upscaler",
                                             info="4x-ultrasharp is non-commercial (licence acceptance)")
            by_key["hires"] = gr.Checkbox(value=d["hires"], label="Hires pass",
                                          info="img2img over the upscaled image, same identity and seed")
            by_key["hires_strength"] = gr.Slider(0.05, 0.8, value=d["hires_strength"], step=0.05,
                                                 label="Hires denoise")
        with gr.Row():
            by_key["template"] = gr.Dropdown([(NONE, NONE)] + [(n, n) for n in sorted(list_templates(settings))],
                                             value=d["template"], label="Put me in this photo (template)",
                                             elem_id="template")
            by_key["template_strength"] = gr.Slider(0.05, 1, value=d["template_strength"], step=0.05,
                                                    label="Template face denoise")
            by_key["photos_2"] = gr.File(
                label="Second person's photos (two people in one picture)", file_count="multiple",
                type="filepath", file_types=PHOTO_TYPES, elem_id="photos-2",
            )
            by_key["layout"] = gr.Dropdown([(NONE, NONE)] + [(n, n) for n in list_layouts()], value=d["layout"],
                                           label="Two-person layout (default two-side-by-side)", elem_id="layout")
        with gr.Row():
            by_key["loras"] = gr.Dataframe(
                value=lora_rows(lora_names(settings)), headers=["LoRA", "weight"],
                datatype=["str", "number"], type="array", interactive=True, column_count=2,
                label=f"LoRAs from {settings.loras_dir} (weight 0 = off)", elem_id="loras",
            )
            lora_refresh = gr.Button("Rescan LoRAs", size="sm", scale=0)
        edit_names = wplus_edit_names(settings)
        with gr.Row(visible=bool(edit_names)):
            by_key["edits"] = gr.Dataframe(
                value=edit_rows(edit_names), headers=["W+ edit", "strength"], datatype=["str", "number"],
                type="array", interactive=True, column_count=2, max_height=300, elem_id="wplus-edits",
                label=f"W+ attribute edits, all {len(edit_names)} from the direction files (method W+; "
                      "strength -4 to 4, 0 = off; GANSpace edits set a position, see `launch.py wplus edits`)",
            )
    fields = {comp: key for key, comp in by_key.items()}
    return PortraitWidgets(
        fields=fields, by_key=by_key, preset_gallery=preset_gallery, preset_names=[n for n, _, _ in cards],
        pose_gallery=pose_gallery, pose_names=[n for n, _, img in poses if img is not None], crops=crops,
        photo_report=photo_report, generate=generate, cancel=cancel, status=status, preview=preview,
        results=results, result_info=result_info, reuse=reuse, results_state=gr.State([]),
        selected=gr.State(0), lora_refresh=lora_refresh,
        extra={"edit_names": edit_names, "save_name": save_name, "save_preset": save_preset, "photo_thumbs": thumbs},
    )
