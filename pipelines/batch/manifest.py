"""The batch manifest: one JSON object per line, {id, identity, status, error,
outputs, seconds, ...}.

Invariants:
- A line is appended with one `write` on an O_APPEND descriptor and fsync'd
  before the next item starts, so after a kill the file holds whole lines plus
  at most one torn last line, which readers ignore.
- Each process of a multi-process run appends to its own shard
  (`manifest.<rank>.jsonl`); shards are merged into `manifest.jsonl` by the main
  process. Merging is last-line-wins per id and idempotent, so a kill during a
  merge is repaired by the next one.
- `manifest.jsonl` is rewritten only atomically (temp file + rename).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path

from ..paths import atomic_write_text, confine

MANIFEST_NAME = "manifest.jsonl"
_SHARD_RE = re.compile(r"^manifest\.(\d{1,5})\.jsonl$")


def shard_path(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / f"manifest.{int(rank)}.jsonl"


def shard_paths(out_dir: Path) -> list[Path]:
    found = []
    for p in Path(out_dir).glob("manifest.*.jsonl"):
        m = _SHARD_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def append_record(path: Path, record: dict) -> None:
    """Append one line durably (single write, fsync)."""
    line = json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False, default=str) + "\n"
    data = line.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # a short write on a full disk: leave a torn line, readers skip it
            raise OSError(f"short write to {path} ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(path: Path, warn=None) -> list[dict]:
    """Records in file order. A torn last line (the bytes after the last newline)
    is ignored; a malformed whole line is skipped with a warning."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = raw.split(b"\n")[:-1]  # the part after the last newline is torn (or empty)
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                raise ValueError("not a manifest record")
        except (ValueError, UnicodeDecodeError):
            (warn or _warn)(f"{path}: line {n} is not a manifest record; ignored.")
            continue
        records.append(rec)
    return records


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def latest(records) -> dict[str, dict]:
    """Last record per id, in order of each id's last appearance."""
    out: dict[str, dict] = {}
    for rec in records:
        out.pop(rec["id"], None)
        out[rec["id"]] = rec
    return out


def load_state(out_dir: Path) -> dict[str, dict]:
    """The newest record per id over the manifest and any shards (shards are
    newer: they hold the lines of the last, possibly unfinished, run)."""
    out_dir = Path(out_dir)
    records = read_manifest(out_dir / MANIFEST_NAME)
    for shard in shard_paths(out_dir):
        records += read_manifest(shard)
    return latest(records)


def merge_shards(out_dir: Path) -> dict[str, dict]:
    """Fold every shard into `manifest.jsonl` (one line per id, atomically
    rewritten), then delete the shards. Returns the merged state."""
    out_dir = Path(out_dir)
    state = load_state(out_dir)
    target = out_dir / MANIFEST_NAME
    text = "".join(
        json.dumps(r, ensure_ascii=False, sort_keys=True, allow_nan=False, default=str) + "\n" for r in state.values()
    )
    current = target.read_text("utf-8") if target.exists() else None
    if current != text and (state or target.exists()):
        atomic_write_text(target, text)
    for shard in shard_paths(out_dir):
        with contextlib.suppress(FileNotFoundError):
            shard.unlink()
    return state


def is_done(record: dict | None, out_dir: Path) -> bool:
    """ok, and every output it lists is still there (inside the out dir)."""
    if not record or record.get("status") != "ok":
        return False
    outputs = record.get("outputs") or []
    if not outputs:
        return False
    try:
        return all(confine(out_dir, rel, "output").is_file() for rel in outputs)
    except Exception:  # a tampered manifest naming a path outside: redo the item
        return False
