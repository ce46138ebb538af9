"""History tab: past outputs in the outputs folder with their recipes; reuse a
recipe in the Portrait tab."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from pipelines.errors import LikenessError
from pipelines.metadata import read_recipe
from pipelines.settings import Settings

from .portrait import PortraitTab, user_error
from .requests_map import likeness_text

MAX_ITEMS = 200


def list_outputs(outputs_dir: Path | str, limit: int = MAX_ITEMS) -> list[Path]:
    """PNG outputs under `outputs_dir`, newest first (temp and hidden files skipped)."""
    root = Path(outputs_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.rglob("*.png")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return found[:limit]


def describe_recipe(path: Path, recipe: dict) -> str:
    lines = [f"**{path.name}**",
             f"- prompt: {recipe.get('prompt', '')}",
             f"- method {recipe.get('method')}, seed {recipe.get('seed')}, {recipe.get('steps')} steps, "
             f"CFG {recipe.get('cfg')}, {recipe.get('width')}×{recipe.get('height')}, sampler {recipe.get('sampler')}",
             f"- {likeness_text(recipe)}"]
    if recipe.get("demo"):
        lines.append(f"- {recipe['demo'] if isinstance(recipe['demo'], str) else 'demo models: random weights'}")
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
        self.paths = gr.State([])
        self.selected = gr.State(None)

    def load(self):
        paths = list_outputs(self.settings.outputs_dir)
        return ([(str(p), p.parent.name) for p in paths], [str(p) for p in paths],
                f"{len(paths)} image(s) in `{self.settings.outputs_dir}`")

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
            raise user_error(exc) from None
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
