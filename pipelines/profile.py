"""The run profile: every rule that demo mode changes, in one immutable object.

Demo mode (`--demo`, `LIKENESS_DEMO=1`) runs the tiny random-weight models that
the project builds itself (pipelines/tiny/). Those models prove the wiring, not
image quality, so a demo run is made small and short, and everything it writes
says so. Each of those rules lives here, as a method of `RunProfile`:

- `size(w, h)`: an SDXL bucket becomes 1/8 of each side (at least 64 px, a
  multiple of 8), so tiny models on a CPU take seconds;
- `cap_steps(n)`: a preset's steps are capped at `DEMO_MAX_STEPS`;
- `train_steps(photos)`: a LoRA's default steps (FaceChain: 200 per photo, at
  most 800; demo: 10 per photo, at most 40);
- `train_resolution(default)`: the W+ trainer's default resolution (64 in demo);
- `training_face_px(default)`: the smallest face the W+ trainer keeps from the
  command line (64 in demo, where the test photos are small);
- `notice`: the line every screen and file shows ("demo models: random
  weights"), None for real models;
- `builds_models`: whether models are built locally (the demo packs) rather than
  downloaded, so nothing is missing, to download or to license.

The profile is resolved once, from the settings (`Settings.profile`), and the
front doors (CLI, web UI, batch) hand that object on. A function that needs a
demo rule takes the profile, never a loose boolean, so two front doors cannot
disagree about what demo mode means.

This module imports nothing of the project: every layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass

DEMO_NOTICE = "demo models: random weights"
DEMO_MAX_STEPS = 8  # demo models have random weights: more steps only cost time
DEMO_TRAIN_RESOLUTION = 64
DEMO_TRAINING_FACE_PX = 64


def demo_bucket(width: int, height: int) -> tuple[int, int]:
    """1/8 of each side, a multiple of 8 and at least 64 px."""
    return max(64, (width // 8) // 8 * 8), max(64, (height // 8) // 8 * 8)


@dataclass(frozen=True)
class RunProfile:
    """The rules of one kind of run: real models (`REAL`) or demo models (`DEMO`)."""

    demo: bool = False

    @property
    def notice(self) -> str | None:
        """What images, recipes and screens say about the models (None: nothing)."""
        return DEMO_NOTICE if self.demo else None

    @property
    def builds_models(self) -> bool:
        """Models are built here (the tiny packs), never downloaded or licensed."""
        return self.demo

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The size a run at bucket `width` x `height` is made at."""
        return demo_bucket(width, height) if self.demo else (width, height)

    def cap_steps(self, steps: int) -> int:
        """A preset's steps as this profile runs them."""
        return min(steps, DEMO_MAX_STEPS) if self.demo else steps

    def train_steps(self, photos: int) -> int:
        """A LoRA's default training steps for `photos` photos."""
        return min(10 * photos, 40) if self.demo else min(200 * photos, 800)

    def train_resolution(self, default: int) -> int:
        """The W+ trainer's resolution when none is given."""
        return DEMO_TRAIN_RESOLUTION if self.demo else default

    def training_face_px(self, default: float) -> float:
        """The smallest face (px) the W+ trainer keeps when none is given."""
        return DEMO_TRAINING_FACE_PX if self.demo else default


REAL = RunProfile(demo=False)
DEMO = RunProfile(demo=True)


def profile_for(demo: bool) -> RunProfile:
    return DEMO if demo else REAL


def profile_of(settings) -> RunProfile:
    """The profile of `settings`: `Settings.profile`; an object without one (a
    stand-in in a test) by its `demo` attribute, real when it has none."""
    found = getattr(settings, "profile", None)
    if isinstance(found, RunProfile):
        return found
    return profile_for(bool(getattr(settings, "demo", False)))

