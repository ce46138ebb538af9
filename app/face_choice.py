"""The Portrait tab's face gallery: which face of each photo is used, and picking
another face in a group photo with a click. No gradio here (testable alone).

A photo with one face shows the aligned crop the identity uses. A photo with
several faces shows every face, numbered as the engine numbers them (1 = the
largest box, see pipelines/faces/analysis.py), the used one marked; a click on
another sets the request's `face_index` for that photo. The face numbers come
from the same analyser, photo loading and ranking the engine uses, so the face
clicked is the face used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USED = "✓ used"


@dataclass
class FaceView:
    items: list[tuple[Any, str]] = field(default_factory=list)  # (RGB crop, caption) for the gallery
    targets: list[list] = field(default_factory=list)  # per gallery item: [photo, face number] or []
    report: str = ""


def face_view(engine, paths: list[str], packs: tuple[str, ...], chosen: dict[str, int] | None) -> FaceView:
    """The gallery and report for `paths` with the faces `chosen` ({photo: number})."""
    from pipelines.faces import box_crop
    from pipelines.imageio import load_photo_array

    chosen = {p: int(k) for p, k in (chosen or {}).items() if p in paths}
    identity = engine.identity(photos=paths, packs=packs, faces=chosen or None)
    view = FaceView()
    groups = {c.source: c for c in identity.group_photos}
    analyzer = engine.analyzer(packs[0])
    settings = engine.settings
    for crop, src in zip(identity.crops, identity.used):
        name = Path(src).name
        choice = groups.get(src)
        if choice is None:
            view.items.append((crop, name))
            view.targets.append([])
            continue
        rgb = load_photo_array(src, max_pixels=settings.max_image_pixels, max_side=settings.max_photo_side)
        for k, det in enumerate(analyzer.detect(rgb, src), start=1):
            mark = f" {USED}" if k == choice.face else ""
            view.items.append((box_crop(rgb, det.bbox), f"{name} · face {k}/{choice.faces}{mark}"))
            view.targets.append([src, k])
    lines = [f"Using **{len(identity.used)} of {len(paths)}** photos."]
    for c in identity.group_photos:
        lines.append(f"- **{Path(c.source).name}**: {c.note} ({c.box_text()}); click another face above to "
                     "use it instead.")
    lines += [f"- left out **{Path(f).name}**: {reason}" for f, reason in identity.excluded]
    view.report = "\n".join(lines)
    return view


def pick(targets: list[list], index: int, chosen: dict[str, int] | None) -> dict[str, int] | None:
    """The new `face_index` after a click on gallery item `index`; None when that
    item is no face of a group photo (nothing to choose)."""
    if not isinstance(index, int) or not 0 <= index < len(targets or []) or not targets[index]:
        return None
    photo, k = targets[index]
    out = dict(chosen or {})
    if int(k) == 1:
        out.pop(photo, None)  # face 1 is the default
    else:
        out[photo] = int(k)
    return out
