"""Evaluation harness (`launch.py eval`): methods compared on the same identities,
prompts and seeds, measured like the papers (Face Sim with an independent face
recogniser, CLIP-T), with a calibration row from real photos, written as CSV,
Markdown and a bar chart.

Importing this package loads no model.
"""

from .clipscore import CLIP_MODEL, ClipScorer
from .harness import Calibration, EvalReport, EvalRequest, ImageRecord, calibrate, run_eval
from .inputs import EvalIdentity, parse_methods, read_identities, read_prompts
from .report import SummaryRow, summarise, write_reports

__all__ = [
    "CLIP_MODEL",
    "Calibration",
    "ClipScorer",
    "EvalIdentity",
    "EvalReport",
    "EvalRequest",
    "ImageRecord",
    "SummaryRow",
    "calibrate",
    "parse_methods",
    "read_identities",
    "read_prompts",
    "run_eval",
    "summarise",
    "write_reports",
]
