"""Evaluation reports: one row per method in the style of the PuLID paper's
Table 1 (Face Sim, CLIP-T) plus the face-detection rate and seconds per image,
and one calibration row per recogniser; written as CSV (summary and per image),
Markdown and a bar chart PNG. All files are written atomically.

Aggregation rules (stated in the Markdown too):
- Face Sim is the mean over outputs in which a face was detected; the detection
  rate says how many those were.
- Seconds per image leaves out the first call of each method (it loads the
  method's models) unless that call is all there is.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ..paths import atomic_path, atomic_write_text
from ..profile import profile_of


def method_title(method: str) -> str:
    """A method's full name for the report (from the method registry)."""
    from ..identity import method_info

    return method_info(method).title
SUMMARY_FIELDS = ("kind", "method", "recognizer", "count", "face_sim", "face_sim_std", "face_sim_max",
                  "clip_t", "face_rate", "sec_per_image", "failed")
IMAGE_FIELDS = ("method", "identity", "prompt", "seed", "path", "recognizer", "face_found", "face_sim",
                "face_sim_max", "clip_t", "seconds", "warmup")


@dataclass
class SummaryRow:
    kind: str  # "method" or "calibration"
    method: str  # method name, or "real photos" for calibration
    recognizer: str
    count: int  # images (method) or photo pairs (calibration)
    face_sim: float | None
    face_sim_std: float | None
    face_sim_max: float | None
    clip_t: float | None
    face_rate: float | None
    sec_per_image: float | None
    failed: int = 0


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return round(sum(vals) / len(vals), 4) if vals else None


def _std(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    if len(vals) < 2:
        return None
    m = sum(vals) / len(vals)
    return round(math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)), 4)


def summarise(methods: list[str], records: list, calibration: list, failures: list) -> list[SummaryRow]:
    rows = []
    for m in methods:
        recs = [r for r in records if r.method == m]
        faced = [r for r in recs if r.face_found]
        timed = [r for r in recs if not r.warmup] or recs
        recognizer = recs[0].recognizer if recs else _scorer(m)
        rows.append(SummaryRow(
            kind="method", method=m, recognizer=recognizer, count=len(recs),
            face_sim=_mean(r.face_sim for r in faced), face_sim_std=_std(r.face_sim for r in faced),
            face_sim_max=_mean(r.face_sim_max for r in faced),
            clip_t=_mean(r.clip_t for r in recs),
            face_rate=round(len(faced) / len(recs), 4) if recs else None,
            sec_per_image=_mean(r.seconds for r in timed),
            failed=sum(1 for f in failures if f.method == m),
        ))
    for c in calibration:
        rows.append(SummaryRow(
            kind="calibration", method="real photos", recognizer=c.recognizer, count=c.pairs,
            face_sim=_mean(c.sims), face_sim_std=_std(c.sims), face_sim_max=None, clip_t=None,
            face_rate=round(c.photos_with_face / c.photos, 4) if c.photos else None, sec_per_image=None,
        ))
    return rows


def _scorer(method: str) -> str:
    from ..scoring import scorer_pack

    return scorer_pack(method)


# ---------------------------------------------------------------------- CSV
def _csv_text(fields, dicts) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    for d in dicts:
        w.writerow({k: ("" if d.get(k) is None else d.get(k)) for k in fields})
    return buf.getvalue()


def summary_csv(rows: list[SummaryRow]) -> str:
    return _csv_text(SUMMARY_FIELDS, (asdict(r) for r in rows))


def images_csv(records: list) -> str:
    return _csv_text(IMAGE_FIELDS, (asdict(r) for r in records))


# ----------------------------------------------------------------- Markdown
def _fmt(v, digits=3, pct=False, na="n/a") -> str:
    if v is None:
        return na
    return f"{100 * v:.0f} %" if pct else f"{v:.{digits}f}"


def markdown(rows: list[SummaryRow], meta: dict) -> str:
    lines = ["# Likeness evaluation", ""]
    if meta.get("demo"):
        lines += ["> Demo mode: tiny random-weight models. These numbers prove the wiring, not quality.", ""]
    lines += [
        f"- identities: {meta['identities']}; prompts: {meta['prompts']}; seeds per prompt: {meta['seeds']}",
        f"- steps: {meta['steps']}; size: {meta['size']}; device: {meta['device']}; date: {meta['date']}",
        "",
        "| Method | Face Sim ↑ | Face Sim, best photo | CLIP-T ↑ | Face detected | s / image | Recogniser | N |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        if r.kind == "method":
            name = f"{method_title(r.method)} (`{r.method}`)"
            sim = _fmt(r.face_sim) + (f" ± {r.face_sim_std:.3f}" if r.face_sim_std is not None else "")
            n = f"{r.count} images" + (f", {r.failed} failed" if r.failed else "")
            lines.append(f"| {name} | {sim} | {_fmt(r.face_sim_max)} | {_fmt(r.clip_t, 2)} | "
                         f"{_fmt(r.face_rate, pct=True)} | {_fmt(r.sec_per_image, 2)} | {r.recognizer} | {n} |")
        else:
            sim = _fmt(r.face_sim, na="n/a (needs 2+ photos per person)")
            sim += f" ± {r.face_sim_std:.3f}" if r.face_sim_std is not None else ""
            lines.append(f"| *Calibration: different real photos, same person* | {sim} | – | – | "
                         f"{_fmt(r.face_rate, pct=True)} | – | {r.recognizer} | {r.count} pairs |")
    lines += [
        "",
        "Face Sim: cosine similarity between the face in the output and the identity's reference photos, "
        "embedded by a face recogniser *other* than the one the method conditions on (as in the PuLID paper); "
        "mean over the outputs in which a face was detected. A method's Face Sim reads against the calibration "
        "row of the same recogniser: the similarity of two real photos of one person.",
        "CLIP-T: 100 × cosine of the OpenCLIP ViT-B/32 (LAION-2B) image and prompt embeddings.",
        "s / image: generation time per image including the likeness score, without each method's first "
        "call (model loading).",
        "",
    ]
    if meta.get("failures"):
        lines += ["## Failures", ""]
        lines += [f"- {f.method} / {f.identity} / {f.prompt!r}: {f.error}" for f in meta["failures"]]
        lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------- chart
def write_chart(rows: list[SummaryRow], dest: Path, notice: str | None = None) -> Path:
    """Four bar panels (Face Sim with the calibration levels, CLIP-T, face rate,
    seconds per image); the title carries the run profile's `notice` (demo
    models say so). Uses the Agg canvas directly: no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = [r for r in rows if r.kind == "method"]
    calib = [r for r in rows if r.kind == "calibration"]
    names = [f"{r.method}\n({r.recognizer})" for r in methods]
    fig = Figure(figsize=(10, 7), dpi=100)
    FigureCanvasAgg(fig)
    panels = [("face_sim", "Face Sim ↑ (dashed: real photos, same person)"), ("clip_t", "CLIP-T ↑"),
              ("face_rate", "Face detected in output ↑"), ("sec_per_image", "Seconds per image ↓")]
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(2, 2, i + 1)
        values = [getattr(r, key) for r in methods]
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar(names, heights, color=[colors[k % len(colors)] for k in range(len(names))])
        for bar, v in zip(bars, values):
            label = "n/a" if v is None else (f"{100 * v:.0f}%" if key == "face_rate" else f"{v:.3g}")
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom" if bar.get_height() >= 0 else "top", fontsize=8)
        if key == "face_sim":
            for k, c in enumerate(calib):
                if c.face_sim is not None:
                    ax.axhline(c.face_sim, linestyle="--", linewidth=1, color="0.3" if k == 0 else "0.6",
                               label=f"calibration ({c.recognizer})")
            if any(c.face_sim is not None for c in calib):
                ax.legend(fontsize=7, loc="upper right")
            ax.set_ylim(min(0.0, *heights, *[c.face_sim for c in calib if c.face_sim is not None]), 1.25)
        if key == "face_rate":
            ax.set_ylim(0, 1.05)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("Likeness evaluation" + (f" ({notice})" if notice else ""))
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    return dest


# ---------------------------------------------------------------- all files
def write_reports(report, req, settings, prompts: list[str], identities: list) -> dict[str, Path]:
    out = Path(report.out_dir)
    steps = req.steps if req.steps is not None else "default"
    size = f"{req.width}x{req.height}" if req.width and req.height else "default"
    import datetime as _dt

    profile = profile_of(settings)
    meta = dict(demo=profile.demo, identities=len(identities), prompts=len(prompts), seeds=req.seeds,
                steps=steps, size=size, device=getattr(settings, "device", "?"),
                date=_dt.datetime.now().isoformat(timespec="seconds"), failures=report.failures)
    files = {
        "summary_csv": atomic_write_text(out / "summary.csv", summary_csv(report.rows)),
        "images_csv": atomic_write_text(out / "images.csv", images_csv(report.records)),
        "markdown": atomic_write_text(out / "summary.md", markdown(report.rows, meta)),
        "chart": write_chart(report.rows, out / "summary.png", notice=profile.notice),
    }
    return {k: Path(v) for k, v in files.items()}
