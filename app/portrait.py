"""Portrait tab handlers: photos -> face crops, presets, generate with live
progress and previews, cancel, reuse. Engine errors become `gr.Error`."""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any

import gradio as gr

from pipelines.errors import BadInput, LikenessError, ModelMissing
from pipelines.identity import DEFAULT_METHOD, method_family, method_recognizer
from pipelines.settings import Settings

from .generate_loop import Step, session_job
from .jobs import CancelRegistry, EngineHolder
from .progress import format_seconds, step_preview
from .requests_map import (
    NONE,
    RECIPE_KEYS,
    caption,
    hide_upload_paths,
    likeness_text,
    lora_names,
    lora_rows,
    photo_paths,
    photo_thumbnails,
    request_data,
    request_from_ui,
    speed_widget_values,
    switch_method,
    ui_from_fields,
)
from .widgets import PortraitWidgets

GPU = "gpu"  # concurrency group: one engine job at a time across every event
PREVIEW_EVERY = 0.4  # seconds between live previews


def user_error(exc: BaseException) -> gr.Error:
    """An engine error as the one-sentence message the user sees."""
    if isinstance(exc, LikenessError):  # missing models: the UI's wording (download card, Models tab)
        return gr.Error(hide_upload_paths(getattr(exc, "ui_message", None) or str(exc)))
    traceback.print_exception(exc, file=sys.stderr)
    msg = " ".join(hide_upload_paths(str(exc)).split())[:300]
    return gr.Error(f"unexpected {type(exc).__name__}: {msg}")


def session_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


class PortraitTab:
    def __init__(self, settings: Settings, holder: EngineHolder, cancels: CancelRegistry, w: PortraitWidgets):
        self.settings = settings
        self.holder = holder
        self.cancels = cancels
        self.w = w

    # ---------------------------------------------------------------- mapping
    def keyed(self, values: dict) -> dict[str, Any]:
        return {self.w.fields[c]: v for c, v in values.items() if c in self.w.fields}

    def updates(self, by_key: dict[str, Any]) -> dict:
        return {self.w.by_key[k]: v for k, v in by_key.items() if k in self.w.by_key}

    # ----------------------------------------------------------------- photos
    def analyse(self, photos, method: str, face_index=None):
        """Detect the faces in each photo: the crops used (every face of a group
        photo, to pick from) and the photos left out."""
        crops, report, _ = self.analyse_faces(photos, method, face_index)
        return crops, report

    def analyse_faces(self, photos, method: str, face_index=None):
        """`analyse`, plus which photo and face number each gallery item is."""
        from .face_choice import face_view

        try:
            paths = photo_paths(photos)
        except LikenessError as exc:
            raise user_error(exc) from exc
        if not paths:
            return [], "", []
        # "none" has no recogniser: show the faces as the default method finds them
        packs = (method_recognizer(method) or method_recognizer(DEFAULT_METHOD),)
        missing = self.missing_for(method)
        if any(p in missing for p in packs):  # the photos cannot be read without the face models
            return [], self.missing_report(method, missing), []
        try:
            view = face_view(self.holder.get(), paths, packs, face_index)
        except ModelMissing as exc:
            return [], getattr(exc, "ui_message", None) or str(exc), []
        except LikenessError as exc:
            return [], hide_upload_paths(f"**No usable photo.** {exc}"), []
        lines = [view.report]
        if missing:
            lines.append(self.missing_report(method, missing))
        return view.items, hide_upload_paths("\n".join(lines)), view.targets

    def pick_face(self, photos, method: str, face_index, evt: gr.SelectData):
        """A click on a face of a group photo: use that face for that photo. The
        gallery is rebuilt the same way to learn which face was clicked (the
        identity is cached; only the group photos are detected again)."""
        from .face_choice import pick

        _, _, targets = self.analyse_faces(photos, method, face_index)
        chosen = pick(targets, evt.index, face_index)
        if chosen is None:  # a photo with one face: nothing to choose
            return {}
        crops, report, _ = self.analyse_faces(photos, method, chosen)
        w = self.w
        return {w.crops: crops, w.photo_report: report, w.by_key["face_index"]: chosen}

    def missing_for(self, method: str) -> list[str]:
        """The models `method` needs here that are not downloaded (none in demo mode)."""
        from pipelines.bundles import method_models, missing_models, plain_models
        from pipelines.stores import open_store

        names = method_models(method, self.settings) if method != "none" else plain_models(self.settings)
        return missing_models(open_store(self.settings), names)

    def missing_report(self, method: str, missing: list[str]) -> str:
        from pipelines.stores import open_store

        from .models_tab import missing_text

        return missing_text(open_store(self.settings), missing, (method,) if method != "none" else ())

    # ---------------------------------------------------------------- presets
    def preset_fields(self, name: str) -> dict:
        from pipelines.presets import apply_preset, user_presets_dir

        try:
            fields = apply_preset(name, self.settings.profile, user_dir=user_presets_dir(self.settings))
        except LikenessError as exc:
            raise user_error(exc) from exc
        out = ui_from_fields(fields, self.settings.profile, lora_names(self.settings), include_prompt=False)
        out["preset"] = name
        return self.updates(out)

    def pick_preset(self, evt: gr.SelectData):
        return self.preset_fields(self.w.preset_names[evt.index])

    def save_preset(self, values: dict):
        """The current settings as the user's own preset (presets/ beside loras/),
        shown beside the shipped ones and usable from the CLI and batch files."""
        from pipelines.presets import preset_from_request, save_user_preset, user_presets_dir

        from .models_tab import preset_gallery_items
        from .widgets import preset_cards

        by_key = self.keyed(values)
        name = str(values.get(self.w.extra["save_name"]) or "").strip()
        user_dir = user_presets_dir(self.settings)
        try:
            if not name:
                raise BadInput("preset name is empty: type a name such as my-look.")
            # the settings only: no photos are needed (or kept) for a preset
            fields = request_data({**by_key, "photos": None, "identity_card": None, "method": "none"},
                                  self.settings.profile, user_dir)
            fields["method"] = by_key.get("method") or DEFAULT_METHOD
            path = save_user_preset(user_dir, preset_from_request(name, name, fields))
        except LikenessError as exc:
            raise user_error(exc) from exc
        cards = preset_cards(self.settings)
        self.w.preset_names[:] = [n for n, _, _ in cards]  # the gallery's index -> name, for every session
        gr.Info(f"Saved your preset {name!r} ({path.name}); it is listed with the presets.")
        return {self.w.preset_gallery: gr.update(value=preset_gallery_items(self.settings)),
                self.w.by_key["preset"]: gr.update(choices=[(NONE, NONE)] + [(t, n) for n, t, _ in cards],
                                                   value=name)}

    def choose_preset(self, name: str):
        if not name or name == NONE:
            return {}
        return self.preset_fields(name)

    def pick_pose(self, evt: gr.SelectData):
        return self.w.pose_names[evt.index]

    def rescan_loras(self, rows):
        from .requests_map import loras_from_rows

        current = {lo["name"]: lo["weight"] for lo in loras_from_rows(rows)}
        return lora_rows(lora_names(self.settings), current)

    def switch_method(self, method: str, *recipe_values):
        """Show the chosen method's reference recipe in the widgets the user has
        not changed (W+: Euler, cfg 7.5, its negative prompt)."""
        from .widgets import method_choices

        current = dict(zip(RECIPE_KEYS, recipe_values))
        values = switch_method(method, current, [m for _, m in method_choices()])
        return self.updates(values)

    # --------------------------------------------------------------- generate
    def generate(self, values: dict, request: gr.Request, progress=gr.Progress()):
        try:
            from pipelines.presets import user_presets_dir

            req = request_from_ui(self.keyed(values), self.settings.profile, user_presets_dir(self.settings))
        except LikenessError as exc:
            raise user_error(exc) from exc
        yield from self.run(req, request, progress)

    def run(self, req, request: gr.Request | None, progress):
        """Stream one generation into the tab: status, a live preview at most every
        `PREVIEW_EVERY` seconds, then the results, or "Stopped" after a cancel."""
        w = self.w
        family = method_family(req.method)
        with session_job(self.holder, self.cancels, session_of(request), req, progress) as updates:
            progress(0, desc="loading models…")
            yield {w.status: "Loading models and analysing the photos…", w.preview: None}
            last_preview = 0.0
            for update in updates:
                if isinstance(update, Step):
                    now = time.monotonic()
                    if update.info.get("latents") is not None and now - last_preview >= PREVIEW_EVERY:
                        last_preview = now
                        yield {w.status: update.text, w.preview: step_preview(update.info, family)}
                elif update.cancelled:
                    yield {w.status: f"**Stopped**: {update.error} Memory freed; images already written "
                                     "are in the History tab."}
                elif update.error is not None:
                    raise user_error(update.error)
                else:
                    yield self.finished(update.result)

    def finished(self, result) -> dict:
        w = self.w
        items = [(str(g.path), caption(g.recipe)) for g in result.images]
        lines = [f"**Done**: {len(result.images)} image(s) in {format_seconds(result.seconds)}."]
        notice = self.settings.profile.notice
        if notice:
            lines[0] += f" ({notice}.)"
        lines += [f"- left out **{Path(ex['file']).name}**: {hide_upload_paths(str(ex['reason']))}"
                  for ex in result.excluded]
        info = [f"- `{g.path.name}`: seed {g.seed}, {likeness_text(g.recipe)}" for g in result.images]
        if result.images:  # e.g. InstantID: a face that had to be scaled down to fit the size
            lines += [f"- warning: {m}" for m in result.images[0].recipe.get("method_details", {}).get("warnings", [])]
        return {w.status: "\n".join(lines), w.results: items, w.result_info: "\n".join(info),
                w.results_state: [g.recipe for g in result.images], w.selected: 0}

    def cancel(self, request: gr.Request):
        if self.cancels.cancel(session_of(request)):
            return "Cancelling… (stops within one step)"
        return "Nothing is running in this tab."

    # ------------------------------------------------------------------ reuse
    def select_result(self, evt: gr.SelectData):
        return evt.index

    def reuse(self, index, recipes):
        if not recipes:
            raise gr.Error("Generate an image first, then select it and press reuse.")
        recipe = recipes[min(int(index or 0), len(recipes) - 1)]
        return self.recipe_updates(recipe)

    def recipe_updates(self, recipe: dict, identity_card: str | None = None) -> dict:
        fields = dict(recipe.get("request") or {})
        if not fields:
            raise gr.Error("This image has no Likeness recipe to reuse.")
        out = ui_from_fields(fields, self.settings.profile, lora_names(self.settings),
                             edit_names=self.w.extra.get("edit_names"))
        if identity_card is not None:
            out["identity_card"] = identity_card
        return self.updates(out)

    # ----------------------------------------------------------------- wiring
    def wire(self) -> None:
        w = self.w
        inputs = set(w.fields)
        outputs = [w.status, w.preview, w.results, w.result_info, w.results_state, w.selected]
        fill = list(w.fields)
        photos, method = w.by_key["photos"], w.by_key["method"]
        faces = w.by_key["face_index"]
        photos.change(self.analyse, [photos, method, faces], [w.crops, w.photo_report],
                      concurrency_id=GPU, api_visibility="private")
        photos.change(lambda: None, None, w.by_key["identity_card"], queue=False, api_visibility="private")
        if "photo_thumbs" in w.extra:  # the uploads as thumbnails, beside their face crops
            photos.change(photo_thumbnails, photos, w.extra["photo_thumbs"], api_visibility="private")
        method.input(self.analyse, [photos, method, faces], [w.crops, w.photo_report],
                     concurrency_id=GPU, api_visibility="private")
        w.crops.select(self.pick_face, [photos, method, faces], [w.crops, w.photo_report, faces],
                       concurrency_id=GPU, api_visibility="private")
        if "speed" in w.by_key:  # Performance: the mode's sampler/steps/cfg into their widgets
            tuned = [w.by_key[k] for k in ("sampler", "steps", "cfg")]
            w.by_key["speed"].input(lambda s, m: self.updates(speed_widget_values(s, m)), [w.by_key["speed"], method],
                                    tuned, queue=False, api_visibility="private")
        recipe_widgets = [w.by_key[k] for k in RECIPE_KEYS]
        method.input(self.switch_method, [method, *recipe_widgets], recipe_widgets, queue=False,
                     api_visibility="private")
        gen = dict(fn=self.generate, inputs=inputs, outputs=outputs, concurrency_id=GPU,
                   concurrency_limit=1, api_visibility="private", show_progress="full",
                   show_progress_on=[w.status, w.results])
        # every generation event, for the History tab to refresh after each one
        self.generation_events = [
            w.preset_gallery.select(self.pick_preset, None, fill, queue=False, api_visibility="private").then(**gen)]
        w.by_key["preset"].input(self.choose_preset, w.by_key["preset"], fill, queue=False,
                                 api_visibility="private")
        if w.pose_gallery is not None:
            w.pose_gallery.select(self.pick_pose, None, w.by_key["pose"], queue=False, api_visibility="private")
        w.lora_refresh.click(self.rescan_loras, w.by_key["loras"], w.by_key["loras"], queue=False,
                             api_visibility="private")
        self.generation_events.append(w.generate.click(**gen))
        for starts in (w.generate.click, w.preset_gallery.select):  # Cancel is live only while a job runs
            starts(lambda: gr.update(interactive=True, variant="stop"), None, w.cancel, queue=False,
                   api_visibility="private")
        for event in self.generation_events:
            event.then(lambda: gr.update(interactive=False, variant="secondary"), None, w.cancel, queue=False,
                       api_visibility="private")
        w.cancel.click(self.cancel, None, w.status, queue=False, api_visibility="private")
        save_name = w.extra.get("save_name")
        if save_name is not None:
            w.extra["save_preset"].click(self.save_preset, inputs | {save_name}, [w.preset_gallery, w.by_key["preset"]],
                                         queue=False, api_visibility="private")
        w.results.select(self.select_result, None, w.selected, queue=False, api_visibility="private")
        w.reuse.click(self.reuse, [w.selected, w.results_state], fill, queue=False, api_visibility="private")
