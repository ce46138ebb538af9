"""One person's identity from one or more photos, and its "identity card" file.

`build_identity` analyses every photo (the first analyzer detects; every
analyzer embeds that same face with its own recogniser), uses the face the caller
chose in each photo (face 1, the largest, unless told otherwise; numbering in
`analysis.rank_faces`) and records the choice where a photo shows several faces
(`FaceChoice`: "6 faces, used the largest", with the face box), reports photos without
a usable face and carries on with the rest, leaves out photos whose embedding
disagrees with the others, and averages the remaining ones:

- `embeddings[pack]`: mean of the L2-normalised embeddings, re-normalised
  (IP-Adapter FaceID conditions on buffalo_l's `normed_embedding`);
- `raw_embeddings[pack]`: mean of the raw embeddings (InstantID conditions on
  antelopev2's raw `embedding`).

The identity card is one safetensors file: the tensors (`embedding.<pack>`,
`raw_embedding.<pack>`, `crops` (n, 224, 224, 3) uint8, `kps` (5, 2), `bbox`
(4,)) plus the JSON-able facts as string entries of the safetensors header's
`__metadata__` (format, version, name, hash, image_size, used, excluded, and
`faces`, the face choices, optional when read). One
file written atomically, so a card is never half-written or out of step with a
sidecar.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInput, NoFaceFound
from ..paths import atomic_write_bytes
from .analysis import Face, FaceAnalyzer

OUTLIER_THRESHOLD = 0.3  # cosine to the mean of the other photos (ArcFace: same person ~0.5-0.8)
MIN_PHOTOS_FOR_OUTLIERS = 3
CARD_FORMAT = "likeness.identity"
CARD_VERSION = "1"
CARD_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class FaceChoice:
    """Which face of a used photo went into the identity: face number `face`
    (1 = the largest) of `faces` found, with its box (x1, y1, x2, y2) in that
    photo's pixels."""

    source: str
    faces: int
    face: int
    bbox: tuple[float, float, float, float]

    @property
    def note(self) -> str:
        """"6 faces, used the largest", "6 faces, used face 3", or "" for one face."""
        if self.faces <= 1:
            return ""
        which = "the largest" if self.face == 1 else f"face {self.face}"
        return f"{self.faces} faces, used {which}"

    def box_text(self) -> str:
        x1, y1, x2, y2 = (int(round(v)) for v in self.bbox)
        return f"x {x1}-{x2}, y {y1}-{y2}"

    def as_dict(self) -> dict:
        return {"file": self.source, "faces": self.faces, "face": self.face,
                "bbox": [round(float(v), 1) for v in self.bbox], "note": self.note}

    @classmethod
    def from_dict(cls, d: Mapping) -> FaceChoice:
        x1, y1, x2, y2 = (float(v) for v in d["bbox"])
        return cls(str(d["file"]), int(d["faces"]), int(d["face"]), (x1, y1, x2, y2))


@dataclass
class Identity:
    """Per-recogniser embeddings of one person plus what the methods need of
    the reference face (the first used photo): its keypoints, box and image
    size (InstantID draws the keypoint image from them) and the aligned crops
    (FaceID Plus encodes them with CLIP)."""

    name: str
    embeddings: dict[str, np.ndarray]  # pack -> (512,) float32, unit norm
    raw_embeddings: dict[str, np.ndarray]  # pack -> (512,) float32
    crops: list[np.ndarray]  # aligned 224x224 RGB uint8, one per used photo, reference first
    kps: np.ndarray  # (5, 2) reference face keypoints, in reference-image pixels
    bbox: np.ndarray  # (4,) reference face box
    image_size: tuple[int, int]  # (width, height) of the reference image
    used: list[str]  # photos averaged into the identity, reference first
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (photo, reason)
    faces: list[FaceChoice] = field(default_factory=list)  # the face used in each used photo

    @property
    def group_photos(self) -> list[FaceChoice]:
        """The used photos that show several faces (the user may want another one)."""
        return [c for c in self.faces if c.faces > 1]

    @property
    def sources(self) -> list[str]:
        return list(self.used) + [s for s, _ in self.excluded]

    @property
    def hash(self) -> str:
        return embeddings_hash(self.embeddings, self.raw_embeddings)

    def embedding(self, pack: str) -> np.ndarray:
        return self._get(self.embeddings, pack)

    def raw_embedding(self, pack: str) -> np.ndarray:
        return self._get(self.raw_embeddings, pack)

    def _get(self, table: Mapping[str, np.ndarray], pack: str) -> np.ndarray:
        if pack not in table:
            have = ", ".join(sorted(table)) or "none"
            raise BadInput(
                f"identity {self.name!r} has no {pack} embedding (it has: {have}); rebuild it from the photos."
            )
        return table[pack]


@dataclass(frozen=True)
class PhotoOutcome:
    source: str
    used: bool
    reason: str = ""  # why it was left out (or a note, e.g. several faces)
    similarity: float | None = None  # cosine to the mean of the other used photos
    faces: int = 0  # faces found (passing the score gate)
    face: int = 0  # the face number used (1 = the largest); 0 when no face was analysed


@dataclass
class IdentityReport:
    identity: Identity
    photos: list[PhotoOutcome]

    @property
    def used(self) -> list[PhotoOutcome]:
        return [p for p in self.photos if p.used]

    @property
    def excluded(self) -> list[PhotoOutcome]:
        return [p for p in self.photos if not p.used]

    def lines(self) -> list[str]:
        out = [f"identity {self.identity.name!r}: {len(self.used)} of {len(self.photos)} photos used"]
        for p in self.photos:
            note = f" ({p.reason})" if p.reason else ""
            out.append(f"{'used' if p.used else 'left out'}: {p.source}{note}")
        return out


def embeddings_hash(embeddings: Mapping[str, np.ndarray], raw_embeddings: Mapping[str, np.ndarray]) -> str:
    """sha256 over the packs' float32 embeddings, in pack order: the identity's
    stable fingerprint (recorded in output recipes)."""
    h = hashlib.sha256()
    for pack in sorted(set(embeddings) | set(raw_embeddings)):
        h.update(pack.encode() + b"\0")
        for table in (embeddings, raw_embeddings):
            vec = table.get(pack)
            if vec is not None:
                h.update(np.ascontiguousarray(vec, dtype="<f4").tobytes())
            h.update(b"\0")
    return h.hexdigest()


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return (v / n if n > 0 else v).astype(np.float32)


def leave_one_out_similarity(vectors: np.ndarray) -> np.ndarray:
    """Cosine of each row to the normalised mean of all the other rows."""
    unit = np.stack([_unit(v) for v in np.asarray(vectors, np.float32)])
    total = unit.sum(axis=0)
    return np.array([float(unit[i] @ _unit(total - unit[i])) for i in range(len(unit))])


def find_outliers(
    vectors: Mapping[str, np.ndarray] | np.ndarray,
    threshold: float = OUTLIER_THRESHOLD,
    min_photos: int = MIN_PHOTOS_FOR_OUTLIERS,
) -> tuple[list[int], dict[int, float], dict[int, float]]:
    """Split photos into kept and outliers.

    `vectors`: (n, d) embeddings, or {pack: (n, d)}; a photo's similarity is
    its worst leave-one-out cosine over the packs. The worst photo is removed
    while it is under `threshold` and at least `min_photos` remain to judge by
    (with two photos there is no majority to disagree with). Returns (kept
    indices, {outlier index: similarity when removed}, {kept index: final
    similarity})."""
    table = {"": np.asarray(vectors)} if isinstance(vectors, np.ndarray) else dict(vectors)
    n = len(next(iter(table.values()))) if table else 0
    kept = list(range(n))
    outliers: dict[int, float] = {}
    sims: dict[int, float] = {}
    while len(kept) >= 2:
        per_pack = [leave_one_out_similarity(np.asarray(v)[kept]) for v in table.values()]
        worst_of = np.min(np.stack(per_pack), axis=0)
        sims = {k: float(s) for k, s in zip(kept, worst_of)}
        if len(kept) < min_photos:
            break
        j = int(np.argmin(worst_of))
        if worst_of[j] >= threshold:
            break
        outliers[kept[j]] = float(worst_of[j])
        del kept[j]
    return kept, outliers, {k: sims[k] for k in kept if k in sims}


def build_identity(
    photos: Sequence[tuple[str, np.ndarray]],
    analyzers: Mapping[str, FaceAnalyzer],
    outlier_threshold: float = OUTLIER_THRESHOLD,
    name: str = "identity",
    faces: Sequence[int | None] | None = None,
) -> IdentityReport:
    """Combine `photos` ((source, RGB uint8)) into one `Identity` with an
    embedding per analyzer's pack. `faces[i]` is the face number to use in
    photo i (None or 1: the largest). Photos without a usable face (or without
    the asked-for face) are reported and skipped; if none is usable, a single
    photo's own error is raised, or `NoFaceFound` listing every photo's reason."""
    if not photos:
        raise BadInput("no photos given; add at least one photo of the person.")
    if faces is not None and len(faces) != len(photos):
        raise ValueError(f"build_identity: {len(faces)} face numbers for {len(photos)} photos")
    if not analyzers:
        raise ValueError("build_identity needs at least one FaceAnalyzer")
    packs = list(analyzers)
    primary = analyzers[packs[0]]

    # per photo index: its faces (one per pack) or why it has none; sources
    # may repeat, so everything is keyed by position
    analysed: list[tuple[int, dict[str, Face]]] = []
    errors: dict[int, BadInput] = {}
    for idx, (source, rgb) in enumerate(photos):
        try:
            face = primary.analyze(rgb, source, face_index=None if faces is None else faces[idx])
            by_pack = {packs[0]: face}
            for pack in packs[1:]:
                by_pack[pack] = analyzers[pack].embed_detection(rgb, face, source, n_faces=face.n_faces,
                                                               face_index=face.face_index)
        except BadInput as exc:  # NoFaceFound, FaceQualityError, a face number not found, a bad array
            errors[idx] = exc
            continue
        analysed.append((idx, by_pack))

    if not analysed:
        if len(photos) == 1:
            raise errors[0]
        reasons = "; ".join(str(e).rstrip(".") for e in errors.values())
        raise NoFaceFound(f"none of the {len(photos)} photos has a usable face: {reasons}.")

    normed = {p: np.stack([f[p].normed_embedding for _, f in analysed]) for p in packs}
    kept, outliers, sims = find_outliers(normed, outlier_threshold)

    outcomes: dict[int, PhotoOutcome] = {
        i: PhotoOutcome(photos[i][0], used=False, reason=str(e)) for i, e in errors.items()
    }
    choices: dict[int, FaceChoice] = {}
    for j, (idx, by_pack) in enumerate(analysed):
        face = by_pack[packs[0]]
        source, n_faces = photos[idx][0], face.n_faces
        choice = FaceChoice(source, n_faces, face.face_index, tuple(float(v) for v in face.bbox))  # type: ignore[arg-type]
        choices[idx] = choice
        if j in outliers:
            reason = (
                f"its face does not match the other photos (similarity {outliers[j]:.2f} < "
                f"{outlier_threshold:.2f}); is it the same person?"
            )
            if choice.note:
                reason += f" ({choice.note}; another face can be chosen)"
            outcomes[idx] = PhotoOutcome(source, False, reason, outliers[j], n_faces, face.face_index)
        else:
            outcomes[idx] = PhotoOutcome(source, True, choice.note, sims.get(j), n_faces, face.face_index)
    report = [outcomes[i] for i in range(len(photos))]

    used = [analysed[j][1] for j in kept]
    ref = used[0][packs[0]]
    identity = Identity(
        name=name,
        embeddings={p: _unit(normed[p][kept].mean(axis=0)) for p in packs},
        raw_embeddings={p: np.stack([f[p].embedding for f in used]).mean(axis=0).astype(np.float32) for p in packs},
        crops=[f[packs[0]].aligned for f in used],
        kps=ref.kps.astype(np.float32),
        bbox=ref.bbox.astype(np.float32),
        image_size=ref.image_size,
        used=[o.source for o in report if o.used],
        excluded=[(o.source, o.reason) for o in report if not o.used],
        faces=[choices[i] for i, o in enumerate(report) if o.used],
    )
    return IdentityReport(identity, report)


# -- identity card --------------------------------------------------------


def card_path(path: Path | str) -> Path:
    p = Path(path)
    return p if p.suffix == CARD_SUFFIX else p.with_name(p.name + CARD_SUFFIX)


def save_card(identity: Identity, path: Path | str) -> Path:
    """Write `<path>.safetensors` atomically; returns the written path."""
    from safetensors.numpy import save

    dest = card_path(path)
    tensors: dict[str, np.ndarray] = {}
    for pack in sorted(identity.embeddings):
        tensors[f"embedding.{pack}"] = np.ascontiguousarray(identity.embeddings[pack], np.float32)
    for pack in sorted(identity.raw_embeddings):
        tensors[f"raw_embedding.{pack}"] = np.ascontiguousarray(identity.raw_embeddings[pack], np.float32)
    tensors["crops"] = np.ascontiguousarray(np.stack(identity.crops), np.uint8)
    tensors["kps"] = np.ascontiguousarray(identity.kps, np.float32).reshape(5, 2)
    tensors["bbox"] = np.ascontiguousarray(identity.bbox, np.float32).reshape(4)
    meta = {
        "format": CARD_FORMAT,
        "version": CARD_VERSION,
        "name": identity.name,
        "hash": identity.hash,
        "image_size": json.dumps(list(identity.image_size)),
        "used": json.dumps(identity.used),
        "excluded": json.dumps([list(e) for e in identity.excluded]),
        "faces": json.dumps([c.as_dict() for c in identity.faces]),
    }
    return atomic_write_bytes(dest, save(tensors, metadata=meta))


def load_card(path: Path | str) -> Identity:
    """Read and validate an identity card; `BadInput` naming the file if it is
    missing, truncated, not a card, or its embeddings do not match its hash."""
    from safetensors import safe_open

    src = card_path(path)
    if not src.is_file():
        raise BadInput(f"identity card {src} does not exist.")

    def broken(why: str) -> BadInput:
        return BadInput(f"identity card {src} is {why}; rebuild it from the photos.")

    try:
        with safe_open(str(src), framework="np") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # SafetensorError, header JSON, short file, git-lfs pointer
        raise broken("not a readable safetensors file (truncated or corrupt)") from exc
    if meta.get("format") != CARD_FORMAT:
        raise broken("not a Likeness identity card")
    if meta.get("version") != CARD_VERSION:
        raise broken(f"card version {meta.get('version')!r}, this app reads version {CARD_VERSION}")
    try:
        embeddings = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("embedding.")}
        raw = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("raw_embedding.")}
        crops, kps, bbox = tensors["crops"], tensors["kps"], tensors["bbox"]
        image_size = tuple(int(x) for x in json.loads(meta["image_size"]))
        used = [str(s) for s in json.loads(meta["used"])]
        excluded = [(str(s), str(r)) for s, r in json.loads(meta["excluded"])]
        faces = [FaceChoice.from_dict(d) for d in json.loads(meta.get("faces", "[]"))]
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise broken("missing entries") from exc
    if not embeddings or set(embeddings) != set(raw):
        raise broken("missing embeddings")
    for v in list(embeddings.values()) + list(raw.values()):
        if v.ndim != 1 or v.dtype != np.float32 or not np.all(np.isfinite(v)):
            raise broken("holding malformed embeddings")
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8 or len(crops) == 0:
        raise broken("holding malformed face crops")
    if kps.shape != (5, 2) or bbox.shape != (4,) or len(image_size) != 2:
        raise broken("holding malformed keypoints")
    identity = Identity(
        name=str(meta.get("name", src.stem)),
        embeddings=embeddings,
        raw_embeddings=raw,
        crops=list(crops),
        kps=kps,
        bbox=bbox,
        image_size=image_size,  # type: ignore[arg-type]
        used=used,
        excluded=excluded,
        faces=faces,
    )
    if identity.hash != meta.get("hash"):
        raise broken("damaged (its embeddings do not match its recorded hash)")
    return identity
