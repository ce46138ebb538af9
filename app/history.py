"""History tab: the portraits Likeness made (PNGs in the outputs folder that
carry its recipe), newest first, captioned with prompt and likeness, refreshed
after every generation; reuse a recipe in the Portrait tab, or drop any PNG with
a Likeness recipe or A1111 parameters to fill in its settings."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from pipelines.errors import LikenessError
from pipelines.metadata import RECIPE_KEY, png_settings, png_text_chunks, read_recipe
from pipelines.profile import DEMO_NOTICE
from pipelines.settings import Settings

from .portrait import PortraitTab, user_error
from .requests_map import likeness_text, lora_names, ui_from_fields

MAX_ITEMS = 200
SKIPPED_FOLDERS = {"rejects", "identities"}  # best-of-N rejects, identity cards


def _recipe_of(path: Path) -> dict | None:
    """The Likeness recipe in a PNG's header chunks, or None (not ours, damaged)."""
    raw = png_text_chunks(path).get(RECIPE_KEY) if path.stat().st_size else None
    if not raw:
        return None
    try:
        recipe = json.loads(raw)
    except ValueError:
        return None
    return recipe if isinstance(recipe, dict) else None


def list_outputs(outputs_dir: Path | str, limit: int = MAX_ITEMS) -> list[tuple[Path, dict]]:
    """(PNG, recipe) of Likeness outputs under `outputs_dir`, newest first: other
    PNGs, temp and hidden files, rejects and identity folders are skipped."""
    root = Path(outputs_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.rglob("*.png"):
        parts = p.relative_to(root).parts
        if any(x.startswith(".") for x in parts) or any(x.lower() in SKIPPED_FOLDERS for x in parts[:-1]):
            continue
        try:
            if p.is_file():
                found.append((p.stat().st_mtime, p))
        except OSError:
            continue
    found.sort(key=lambda t: t[0], reverse=True)
    out = []
    for _, p in found:
        try:
            recipe = _recipe_of(p)
        except (OSError, LikenessError):
            continue
        if recipe is not None:
            out.append((p, recipe))
            if len(out) >= limit:
                break
    return out


def history_caption(recipe: dict, width: int = 48) -> str:
    """What it was and how alike: the prompt, shortened, then the likeness."""
    prompt = " ".join(str(recipe.get("prompt") or "").split())
    if len(prompt) > width:
        prompt = prompt[: width - 1].rstrip() + "…"
    return f"{prompt or recipe.get('method', '')} · {likeness_text(recipe)}"


def describe_recipe(path: Path, recipe: dict) -> str:
    lines = [f"**{path.name}**",
             f"- prompt: {recipe.get('prompt', '')}",
             f"- method {recipe.get('method')}, seed {recipe.get('seed')}, {recipe.get('steps')} steps, "
             f"CFG {recipe.get('cfg')}, {recipe.get('width')}×{recipe.get('height')}, sampler {recipe.get('sampler')}",
             f"- {likeness_text(recipe)}"]
    if recipe.get("demo"):
        lines.append(f"- {recipe['demo'] if isinstance(recipe['demo'], str) else DEMO_NOTICE}")
    return "\n".join(lines)


class HistoryTab:
    def __init__(self, settings: Settings, portrait: PortraitTab, tabs, portrait_tab_id: str):
        self.settings = settings
        self.portrait = portrait
        self.tabs = tabs
        self.portrait_tab_id = portrait_tab_id

    def build(self) -> None:
        with gr.Row():
            self.refresh = gr.Button("Refresh", size="sm", scale=0)
            self.count = gr.Markdown()
        self.gallery = gr.Gallery(label="Past outputs (newest first)", columns=6, height=420, format="png",
                                  interactive=False, elem_id="history")
        self.info = gr.Markdown(elem_id="history-info")
        with gr.Accordion("Recipe (JSON)", open=False):
            self.recipe = gr.Code(language="json", interactive=False)
        self.reuse = gr.Button("Reuse this recipe in the Portrait tab", elem_id="history-reuse")
        self.drop = gr.File(label="Drop a PNG (Likeness or AUTOMATIC1111) to reuse its settings",
                            file_types=[".png"], type="filepath", elem_id="history-drop", height=90)
        self.drop_info = gr.Markdown(elem_id="history-drop-info")
        self.paths = gr.State([])
        self.selected = gr.State(None)

    def load(self):
        items = list_outputs(self.settings.outputs_dir)
        return ([(str(p), history_caption(r)) for p, r in items], [str(p) for p, _ in items],
                f"{len(items)} portrait(s) in `{self.settings.outputs_dir}`")

    def dropped(self, path: str | None):
        """Settings of a dropped PNG into the Portrait tab. Messages name the file
        by its own name (gradio keeps it as the last part of its upload path)."""
        if not path:
            return {self.drop_info: ""}
        name = Path(path).name
        try:
            kind, data = png_settings(path)
        except LikenessError as exc:
            raise gr.Error(str(exc).replace(str(path), name)) from exc
        if kind == "likeness":
            updates = self.portrait.recipe_updates(data, identity_card=self.identity_card(data))
            what = "its Likeness recipe"
        else:
            fields = ui_from_fields(data, self.settings.profile, lora_names(self.settings))
            updates = self.portrait.updates(fields)
            what = "its A1111 parameters (" + ", ".join(k for k in data if k != "prompt") + ")"
        updates[self.drop_info] = f"Filled in the settings of **{name}** from {what}."
        updates[self.tabs] = gr.Tabs(selected=self.portrait_tab_id)
        return updates

    def select(self, paths: list[str], evt: gr.SelectData):
        # index into our own listing: the client never names the file we read
        if not paths or evt.index >= len(paths):
            return None, "", ""
        path = Path(paths[evt.index])
        try:
            recipe = read_recipe(path)
        except LikenessError as exc:
            return None, f"**{path.name}**: {exc}", ""
        return str(path), describe_recipe(path, recipe), json.dumps(recipe, indent=1, sort_keys=True)

    def reuse_recipe(self, path: str | None):
        if not path:
            raise gr.Error("Select an image in the history first.")
        try:
            recipe = read_recipe(path)
        except LikenessError as exc:
            raise user_error(exc) from exc
        card = self.identity_card(recipe)
        updates = self.portrait.recipe_updates(recipe, identity_card=card)
        updates[self.tabs] = gr.Tabs(selected=self.portrait_tab_id)
        return updates

    def identity_card(self, recipe: dict) -> str | None:
        """The recipe's identity card, only when it lies inside the outputs folder.
        Recipes name the card by file name (in `<outputs>/identities/`); older
        ones held its full path."""
        card = (recipe.get("identity") or {}).get("card")
        if not isinstance(card, str) or not card or "\x00" in card:
            return None
        root = Path(self.settings.outputs_dir).resolve()
        p = Path(card) if Path(card).is_absolute() else root / "identities" / Path(card).name
        p = p.resolve()
        return str(p) if p.is_file() and root in p.parents else None

    def wire(self, app_load) -> None:
        outs = [self.gallery, self.paths, self.count]
        self.refresh.click(self.load, None, outs, queue=False, api_visibility="private")
        app_load(self.load, None, outs, queue=False, api_visibility="private")
        self.gallery.select(self.select, self.paths, [self.selected, self.info, self.recipe], queue=False,
                            api_visibility="private")
        self.reuse.click(self.reuse_recipe, self.selected, list(self.portrait.w.fields) + [self.tabs],
                         queue=False, api_visibility="private")
        self.drop.upload(self.dropped, self.drop, list(self.portrait.w.fields) + [self.tabs, self.drop_info],
                         queue=False, api_visibility="private")
        for event in getattr(self.portrait, "generation_events", []):  # the newest portrait shows at once
            event.then(self.load, None, outs, queue=False, api_visibility="private")
