"""Live progress for a running generation: the step preview and a step clock
that estimates the time left. No gradio here (testable alone).

The preview is the real tiny autoencoder's decode (TAESDXL / TAESD, computed by
the engine only when asked: `decode_preview` in the step info,
pipelines/previews.py). Without that model on disk it falls back to the
projection below, which multiplies each latent pixel's 4 channels by a fixed 4x3 matrix (a
least-squares fit of the VAE decoder's average colour response, the approach
ComfyUI and A1111 use for their "latent2rgb" previews) instead of running the
VAE: microseconds per step, blurry but faithful in colour and layout."""

from __future__ import annotations

import time

import numpy as np

# SDXL latent space (4 channels, scaled by vae.scaling_factor) -> RGB in [-1, 1]
SDXL_LATENT_RGB = np.array(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.6262],
    ],
    dtype=np.float32,
)
SDXL_LATENT_BIAS = np.array([0.1084, -0.0175, -0.0011], dtype=np.float32)
# SD1.5 latent space (the W+ adapter's base)
SD15_LATENT_RGB = np.array(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ],
    dtype=np.float32,
)
SD15_LATENT_BIAS = np.zeros(3, dtype=np.float32)

PREVIEW_SIDE = 256


def latents_to_rgb(latents, family: str = "sdxl") -> np.ndarray:
    """(B, 4, h, w) or (4, h, w) latents (torch or numpy) -> (h, w, 3) uint8 of
    the first image. Other channel counts fall back to the first three channels,
    min-max normalised (a tiny demo model may not have 4)."""
    arr = latents
    if hasattr(arr, "detach"):
        arr = arr.detach().float().cpu().numpy()
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 4:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"latents must be (B, C, H, W) or (C, H, W), got shape {arr.shape}")
    chw = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    if chw.shape[0] == 4:
        factors, bias = (SD15_LATENT_RGB, SD15_LATENT_BIAS) if family == "sd15" else (SDXL_LATENT_RGB, SDXL_LATENT_BIAS)
        rgb = np.einsum("chw,cr->hwr", chw, factors) + bias
        rgb = (rgb + 1.0) * 0.5
    else:
        rgb = np.transpose(chw[:3] if chw.shape[0] >= 3 else np.repeat(chw[:1], 3, axis=0), (1, 2, 0))
        lo, hi = float(rgb.min()), float(rgb.max())
        rgb = (rgb - lo) / (hi - lo) if hi > lo else np.zeros_like(rgb)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def latent_preview(latents, family: str = "sdxl", side: int = PREVIEW_SIDE):
    """The preview as a PIL image scaled so its longer side is `side` pixels."""
    from PIL import Image

    img = Image.fromarray(latents_to_rgb(latents, family))
    w, h = img.size
    k = side / max(w, h)
    return img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BILINEAR)


def step_preview(info: dict, family: str = "sdxl", side: int = PREVIEW_SIDE):
    """The preview of one step's info: the TAESD decode when the engine offers one,
    else the latent projection; scaled so its longer side is `side` pixels."""
    from PIL import Image

    decode = info.get("decode_preview")
    img = decode() if callable(decode) else None
    if img is None:
        return latent_preview(info["latents"], family, side)
    w, h = img.size
    k = side / max(w, h)
    return img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BILINEAR)


class StepClock:
    """Counts sampling steps over all images of a job and estimates the time left
    from the mean step time so far (leaving out the first step, which pays for
    warm-up)."""

    def __init__(self, images: int, steps: int, now=time.monotonic):
        self.total = max(1, images * steps)
        self.steps = steps
        self._now = now
        self._start = now()
        self._times: list[float] = []
        self._last = self._start
        self.done = 0

    def tick(self, image_index: int, step: int) -> None:
        t = self._now()
        self._times.append(t - self._last)
        self._last = t
        self.done = min(self.total, image_index * self.steps + step)

    @property
    def fraction(self) -> float:
        return self.done / self.total

    def eta(self) -> float | None:
        """Seconds left, or None until two steps were timed (the first pays for warm-up)."""
        if len(self._times) < 2:
            return None
        times = self._times[1:]
        return max(0.0, sum(times) / len(times) * (self.total - self.done))

    def elapsed(self) -> float:
        return self._now() - self._start


def format_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def describe_step(image_index: int, images: int, step: int, steps: int, eta: float | None) -> str:
    return f"image {image_index + 1}/{images} · step {step}/{steps} · ETA {format_seconds(eta)}"
