"""Running a batch job: resumable, each bad item isolated, split across processes.

Order of a run (every process runs the same steps; `main` is rank 0):
 1. main: remove stray temp files of a killed run, fold old shards into
    `manifest.jsonl`; everyone waits.
 2. everyone: pending = job items not yet done (ok in the manifest and every
    output present), in swap-minimising order. All ranks compute the same list.
 3. main: analyse each identity that pending items need, once, save it as a card
    in `<out>/identities/` and record the outcome in `identities.json`; everyone
    waits, then reads it. Items then pass the card, so no process re-detects faces.
 4. everyone: its contiguous slice of the pending list; per item, the engine
    writes into a private staging folder, finished files are renamed to their
    final names, then one manifest line is appended (fsync'd).
 5. everyone waits; main merges the shards and prints the summary; the exit code
    is 0 if every job item is ok, else 1.
A kill at any point leaves whole files and whole manifest lines; the rerun
redoes exactly the items without an ok line whose outputs exist.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import Cancelled, LikenessError
from ..memory import free_memory, is_oom
from ..paths import atomic_write_text, confine
from ..processes import process_state
from .jobfile import BatchItem, Job
from .manifest import MANIFEST_NAME, append_record, is_done, load_state, merge_shards, shard_path

IDENTITIES_DIR = "identities"
IDENTITIES_FILE = "identities.json"
STAGING_PREFIX = ".staging-"


# -------------------------------------------------------------------- results
@dataclass
class IdentityOutcome:
    card: str | None = None  # card every item of this identity uses
    error: str | None = None  # why the identity could not be made; its items fail with it
    notes: list[str] = field(default_factory=list)  # photos left out


@dataclass
class BatchReport:
    job: Job
    out_dir: Path
    records: dict[str, dict]  # the final manifest record of each job item (main process)
    skipped: int  # items already done before this run
    ran: int  # items this run attempted (all processes)
    exit_code: int

    @property
    def ok(self) -> int:
        return sum(1 for r in self.records.values() if r.get("status") == "ok")

    @property
    def failed(self) -> int:
        return len(self.job.items) - self.ok


def default_out_dir(job: Job, settings) -> Path:
    return Path(settings.outputs_dir) / job.folder_name


# ------------------------------------------------------------------- the run
def run_job(
    job: Job,
    settings=None,
    out_dir: Path | str | None = None,
    *,
    engine=None,
    state=None,
    stream: TextIO | None = None,
    out: TextIO | None = None,
    on_step=None,
    cancel=None,
) -> BatchReport:
    """Run every not-yet-done item of `job`. `engine` defaults to one resident
    `Engine(settings)` with its outputs folder set to `out_dir` (created only if
    there is work). `stream` gets progress, `out` the summary. `on_step` and
    `cancel` (a `threading.Event`) go to the engine: a set event stops the item
    within a step and the run raises `Cancelled` (finished items stay done)."""
    stream = stream or sys.stderr
    out = out or sys.stdout
    state = state or process_state()
    out_dir = Path(out_dir) if out_dir else default_out_dir(job, settings)
    out_dir = out_dir.expanduser().resolve()
    main = state.is_main_process

    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        clean_stray_files(out_dir)
        merge_shards(out_dir)
    state.wait_for_everyone()

    before = load_state(out_dir)
    ordered = order_items(job.items)
    pending = [it for it in ordered if not is_done(before.get(it.id), out_dir)]
    skipped = len(ordered) - len(pending)

    if pending and engine is None:
        engine = _make_engine(settings, out_dir, state)
    if main:
        outcomes = prepare_identities(job, pending, engine, out_dir, stream) if pending else {}
        atomic_write_text(out_dir / IDENTITIES_FILE, json.dumps(
            {k: vars(v) for k, v in outcomes.items()}, indent=1, sort_keys=True))
    state.wait_for_everyone()
    if not main:
        outcomes = {k: IdentityOutcome(**v) for k, v in
                    json.loads((out_dir / IDENTITIES_FILE).read_text("utf-8")).items()}

    target = out_dir / MANIFEST_NAME if state.num_processes == 1 else shard_path(out_dir, state.process_index)
    with state.split_between_processes(pending) as mine:
        mine = list(mine)
        progress = Progress(len(mine), stream, state.process_index, state.num_processes)
        try:
            for n, item in enumerate(mine):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"batch cancelled after {n} of {len(mine)} items; run it again to continue.")
                record = run_item(engine, item, outcomes.get(item.identity or ""), out_dir, on_step, cancel)
                record["rank"] = state.process_index
                append_record(target, record)
                progress.update(item, record)
        finally:
            progress.close()

    state.wait_for_everyone()
    merged = merge_shards(out_dir) if main else {}
    state.wait_for_everyone()
    if not main:
        merged = load_state(out_dir)
    records = {it.id: merged[it.id] for it in job.items if it.id in merged}
    ok = all(records.get(it.id, {}).get("status") == "ok" for it in job.items)
    report = BatchReport(job, out_dir, records, skipped=skipped, ran=len(pending), exit_code=0 if ok else 1)
    if main:
        print_summary(report, out)
        out.flush()
    # a rank that exits early with status 1 makes the launcher SIGTERM the others:
    # leave together, after the summary is out
    state.wait_for_everyone()
    return report


def _make_engine(settings, out_dir: Path, state):
    from ..engine import Engine

    update: dict[str, Any] = {"outputs_dir": out_dir}
    dev = getattr(state, "device", None)
    if settings.device == "auto" and dev is not None and getattr(dev, "type", None) == "cpu":
        update["device"] = "cpu"  # `accelerate launch --cpu` on a machine with a GPU
    return Engine(settings.model_copy(update=update))


def order_items(items: list[BatchItem]) -> list[BatchItem]:
    return sorted(items, key=BatchItem.sort_key)


def clean_stray_files(out_dir: Path) -> None:
    """Remove what a killed run can leave: temp files of atomic writes
    (`.<name>.<random>.part`) and per-item staging folders."""
    for p in out_dir.glob(f"{STAGING_PREFIX}*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
    for folder in (out_dir, out_dir / IDENTITIES_DIR):
        for p in folder.glob(".*.part"):
            if p.is_file() or p.is_symlink():
                p.unlink(missing_ok=True)


# ----------------------------------------------------------------- identities
def _recognizer(method: str) -> str | None:
    from ..identity import method_recognizer

    return method_recognizer(method)


def prepare_identities(job: Job, pending: list[BatchItem], engine, out_dir: Path, stream) -> dict[str, IdentityOutcome]:
    """Analyse each identity the pending items need, once, with every face
    recogniser its methods use, and save it as a card the items then share."""
    packs: dict[str, set[str]] = {}
    for it in pending:
        if it.identity is not None and it.method != "none":
            rec = _recognizer(it.method)
            packs.setdefault(it.identity, set())
            if rec:
                packs[it.identity].add(rec)
    outcomes: dict[str, IdentityOutcome] = {}
    for name, needed in packs.items():
        source = job.identities[name]
        try:
            if source.card is not None:
                engine.identity(card=str(source.card))  # fail early, once, if it is unreadable
                outcomes[name] = IdentityOutcome(card=str(source.card))
                continue
            if not needed:  # its methods detect faces themselves
                continue
            chosen = source.face_index()  # {photo: face number} where the job names a face
            result = engine.identity(photos=[str(p) for p in source.photos], packs=tuple(sorted(needed)),
                                     **({"faces": chosen} if chosen else {}))
            identity = getattr(result, "identity", None) if not hasattr(result, "embeddings") else result
            card = _save_card(identity, out_dir)
            outcomes[name] = IdentityOutcome(card=str(card), notes=_left_out(identity))
            for choice in getattr(identity, "group_photos", []):  # "6 faces, used the largest"
                print(f"identity {name}: {choice.source}: {choice.note} (face box {choice.box_text()})",
                      file=stream)
            for note in outcomes[name].notes:
                print(f"identity {name}: left out {note}", file=stream)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad identity must not stop the job
            outcomes[name] = IdentityOutcome(error=f"identity {name!r}: {error_line(exc)}")
            print(f"identity {name}: {error_line(exc)}", file=stream)
    return outcomes


def _save_card(identity, out_dir: Path) -> Path:
    """Save where the engine's recipes look for it (`<out>/identities/<hash>`), so
    the engine finds it there instead of writing a second copy."""
    from types import SimpleNamespace

    from ..faces.person import card_path, save_card
    from ..outputs import identity_card_path

    path = identity_card_path(SimpleNamespace(outputs_dir=out_dir), identity)
    path.parent.mkdir(parents=True, exist_ok=True)
    if card_path(path).is_file():
        return card_path(path)
    return save_card(identity, path)


def _left_out(identity) -> list[str]:
    notes = []
    for ex in getattr(identity, "excluded", None) or []:
        if isinstance(ex, (tuple, list)) and len(ex) == 2:
            notes.append(f"{ex[0]}: {ex[1]}")
        else:
            notes.append(str(getattr(ex, "source", ex)) + (f": {ex.reason}" if getattr(ex, "reason", "") else ""))
    return notes


# ---------------------------------------------------------------------- items
def error_line(exc: BaseException) -> str:
    """One line for the manifest; out-of-memory also frees what it can."""
    if is_oom(exc):
        free_memory()
        return "out of memory: " + " ".join(str(exc).split())[:300]
    if isinstance(exc, LikenessError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: " + " ".join(str(exc).split())[:300]




def run_item(engine, item: BatchItem, ident: IdentityOutcome | None, out_dir: Path, on_step=None,
             cancel=None) -> dict:
    """Generate one item; never raises for a bad item (returns a failed record)."""
    t0 = time.perf_counter()
    record: dict[str, Any] = {
        "id": item.id, "identity": item.identity, "method": item.method, "seed": item.seed,
        "prompt": item.request.prompt, "status": "failed", "error": None, "outputs": [],
    }
    staging = out_dir / f"{STAGING_PREFIX}{item.id[:16]}"
    try:
        if ident is not None and ident.error:
            raise _IdentityFailed(ident.error)
        update: dict[str, Any] = {"out_dir": str(staging), "name_prefix": "item"}
        if ident is not None and ident.card and item.method != "none":
            update.update(photos=[], identity_card=ident.card)
        hooks = {k: v for k, v in (("on_step", on_step), ("cancel", cancel)) if v is not None}
        result = engine.generate(item.request.model_copy(update=update), **hooks)
        record["outputs"] = _publish(result.images, item, out_dir)
        record["likeness"] = [img.recipe.get("likeness") for img in result.images]
        record["status"] = "ok"
    except Cancelled:
        raise
    except _IdentityFailed as exc:
        record["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - isolate the item, keep the job going
        record["error"] = error_line(exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return record


class _IdentityFailed(Exception):
    pass


def _publish(images, item: BatchItem, out_dir: Path) -> list[str]:
    """Rename the staged files to names derived from the item id (a rename is
    atomic, and overwrites what a killed earlier attempt left)."""
    names = []
    for k, img in enumerate(images):
        src = Path(img.path)
        suffix = src.suffix.lower() if src.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") else ".png"
        name = item.output_stem() + (f"-{k}" if len(images) > 1 else "") + suffix
        dest = confine(out_dir, name, "output name")
        os.replace(src, dest)
        names.append(name)
    if not names:
        raise RuntimeError("the engine returned no image")
    return names


# ------------------------------------------------------------------- progress
class Progress:
    """tqdm bar (done / failed / ETA) on a terminal; plain lines otherwise."""

    def __init__(self, total: int, stream: TextIO, rank: int = 0, nproc: int = 1):
        self.total, self.stream = total, stream
        self.tag = f"[rank {rank}] " if nproc > 1 else ""
        self.done = self.failed = 0
        self.t0 = time.perf_counter()
        self.bar = None
        if total and _isatty(stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=stream, unit="item", desc=(self.tag.strip() or "batch"),
                            position=rank if nproc > 1 else None, dynamic_ncols=True)

    def update(self, item: BatchItem, record: dict) -> None:
        self.done += 1
        ok = record["status"] == "ok"
        self.failed += 0 if ok else 1
        line = (f"{item.short_id} {item.identity or '-'} {item.method} seed {item.seed}: "
                + (f"ok {record['seconds']:.1f} s" if ok else f"FAILED {record['error']}"))
        if self.bar is not None:
            self.bar.set_postfix(ok=self.done - self.failed, failed=self.failed, refresh=False)
            self.bar.update(1)
            if not ok:
                self.bar.write(self.tag + line, file=self.stream)
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        print(f"{self.tag}[{self.done}/{self.total}] {line} (failed {self.failed}, ETA {_hms(eta)})",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# -------------------------------------------------------------------- summary
def print_summary(report: BatchReport, out: TextIO) -> None:
    job, recs = report.job, report.records
    rows: dict[tuple[str, str], list] = {}
    for it in job.items:
        r = recs.get(it.id, {})
        row = rows.setdefault((it.identity or "-", it.method), [0, 0, 0.0])
        row[0 if r.get("status") == "ok" else 1] += 1
        row[2] += float(r.get("seconds") or 0.0)
    w = max([len("identity")] + [len(k[0]) for k in rows])
    print(f"batch {job.name}: {len(job.items)} items, {report.ok} ok, {report.failed} failed "
          f"({report.skipped} already done, {report.ran} run now)", file=out)
    print(f"{'identity':<{w}}  {'method':<10} {'ok':>5} {'failed':>7} {'seconds':>9}", file=out)
    for (ident, method), (ok, failed, secs) in sorted(rows.items()):
        print(f"{ident:<{w}}  {method:<10} {ok:>5} {failed:>7} {secs:>9.1f}", file=out)
    failed = [it for it in job.items if recs.get(it.id, {}).get("status") != "ok"]
    if failed:
        print("failed items:", file=out)
        for it in failed[:50]:
            err = recs.get(it.id, {}).get("error") or "not run"
            print(f"  {it.short_id} {it.identity or '-'} {it.method} seed {it.seed}: {err}", file=out)
        if len(failed) > 50:
            print(f"  ... and {len(failed) - 50} more (see the manifest)", file=out)
    print(f"outputs: {report.out_dir}  manifest: {report.out_dir / MANIFEST_NAME}", file=out)


def print_items(job: Job, out: TextIO) -> None:
    """`--dry-run`: the expanded items in run order; nothing is written."""
    items = order_items(job.items)
    dup = f" ({job.duplicates} duplicate combinations dropped)" if job.duplicates else ""
    print(f"batch {job.name}: {len(items)} items{dup}", file=out)
    print(f"{'id':<12}  {'identity':<16} {'method':<10} {'seed':>10}  prompt", file=out)
    for it in items:
        prompt = " ".join(it.request.prompt.split())
        prompt = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        print(f"{it.short_id:<12}  {(it.identity or '-'):<16} {it.method:<10} {it.seed:>10}  {prompt}", file=out)
