"""Render the preset cards from real generations: each card shows what the preset
does to one reference photo, with the preset's title and settings in a band at
the top (the UI's gallery caption covers the bottom of a card, never this band).

    python assets/presets/render_cards.py --photo me.jpg                 # real weights, every preset
    python assets/presets/render_cards.py --photo me.jpg --only polaroid --seed 7
    python assets/presets/render_cards.py --photo me.jpg --demo --out /tmp/cards   # wiring check on tiny models

Cards are written atomically to assets/presets/previews/<name>.png (or --out).
Without --photo, the drawn style cards (`python -m pipelines.presets --previews`)
stay what the UI shows. Run it again after changing a preset or the weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CARD = (240, 300)
BAND = 64  # px of title band at the top


def compose_card(preset, portrait, size: tuple[int, int] = CARD):
    """The portrait (cropped to fill) under a band with the title and settings."""
    from PIL import Image, ImageDraw, ImageOps

    from pipelines.presets import _rgb, draw_card_title

    W, H = size
    bg, accent = _rgb(preset.colors[0]), _rgb(preset.colors[1])
    card = Image.new("RGB", size, bg)
    card.paste(ImageOps.fit(portrait.convert("RGB"), (W, H - BAND)), (0, BAND))
    draw_card_title(ImageDraw.Draw(card), preset, W, accent, sizes=(20, 12), rows=(22, 48), margin=16)
    return card


def render(photo: str, out_dir: Path, settings, only: list[str] | None = None, seed: int = 7) -> list[Path]:
    from pipelines.engine import Engine
    from pipelines.paths import atomic_path
    from pipelines.presets import list_presets, load_preset
    from pipelines.requests import GenerateRequest, validate_request

    engine = Engine(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for preset in list_presets():
        if only and preset.name not in only:
            continue
        fields = load_preset(preset.name, profile=settings.profile)
        fields.update(photos=[photo], seed=seed, count=1, out_dir=str(out_dir / ".renders"))
        result = engine.generate(validate_request(GenerateRequest, fields, f"preset {preset.name}"))
        card = compose_card(preset, result.images[0].image)
        dest = out_dir / f"{preset.name}.png"
        with atomic_path(dest) as tmp:
            card.save(tmp, format="PNG")
        written.append(dest)
        print(f"{preset.name}: {dest}", flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from pipelines.errors import LikenessError
    from pipelines.presets import PREVIEWS_DIR
    from pipelines.settings import load_settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", required=True, help="a photo of the reference person")
    ap.add_argument("--out", type=Path, default=PREVIEWS_DIR, help=f"card folder (default: {PREVIEWS_DIR})")
    ap.add_argument("--only", action="append", metavar="NAME", help="only this preset (repeatable)")
    ap.add_argument("--seed", type=int, default=7, help="seed of every card (default: 7)")
    ap.add_argument("--demo", action="store_true", help="tiny random-weight models (checks the wiring only)")
    args = ap.parse_args(argv)
    try:
        render(args.photo, args.out, load_settings(**({"demo": True} if args.demo else {})), args.only, args.seed)
    except LikenessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
