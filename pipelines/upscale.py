"""Upscale a generated image with a spandrel super-resolution model, tile by tile,
and optionally run a hires pass (SDXL/SD1.5 img2img at a low strength with the
same identity conditioning and seed) over the result.

Rules:
- Weights are only loaded from the model store's safetensors copy of the
  published pickle (spandrel would otherwise unpickle the .pth itself).
- Tiled: the model sees one tile (plus an overlap of context on each side) at a
  time and writes only the tile's core into the output array, so the
  accelerator's memory does not grow with the image; the host holds one uint8
  output image. A tile is `tile` pixels of the input; the overlap keeps seams
  invisible (it covers most of the receptive field that matters).
- The models are 4x (Real-ESRGAN x4plus, 4x-UltraSharp); 1.5x and 2x run the
  4x model then resize down with Lanczos, as AUTOMATIC1111's upscaler step does.
  The output side is rounded to a multiple of 8 (the VAE's factor, so a hires
  pass can run on it): exact for 2x and 4x, within 4 px for 1.5x.
- An output over the pixel cap (`Settings.max_image_pixels`, the same cap the
  app applies when it reads images, so an output stays readable for a replay)
  is refused before any denoising, naming the sizes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInput, ModelError
from .types import EngineServices

UPSCALE_FACTORS = (1.0, 1.5, 2.0, 4.0)
DEFAULT_TILE = 256  # input pixels per tile side
TILE_OVERLAP = 16  # input pixels of context on each side of a tile
HIRES_STRENGTH = 0.3


@dataclass(frozen=True)
class UpscalerSpec:
    name: str  # the `--upscaler` value
    model: str  # catalog entry (assets/models.toml)
    weights: str  # the published file; the store hands back its .safetensors copy
    architecture: str = "ESRGAN"  # spandrel architecture id
    scale: int = 4


UPSCALERS: dict[str, UpscalerSpec] = {
    s.name: s
    for s in (
        UpscalerSpec("realesrgan-x4plus", "realesrgan-x4plus", "RealESRGAN_x4plus.pth"),
        UpscalerSpec("4x-ultrasharp", "4x-ultrasharp", "4x-UltraSharp.pth"),
    )
}
DEFAULT_UPSCALER = "realesrgan-x4plus"


def upscaled_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """The output size for `factor`, each side rounded to a multiple of 8."""
    return max(8, int(round(width * factor / 8)) * 8), max(8, int(round(height * factor / 8)) * 8)


def check_upscale(width: int, height: int, factor: float, max_pixels: int) -> tuple[int, int]:
    """The output size, or a BadInput naming the sizes when it exceeds the cap."""
    if factor not in UPSCALE_FACTORS:
        raise BadInput(f"upscale: {factor:g} is not offered; choose one of "
                       + ", ".join(f"{f:g}" for f in UPSCALE_FACTORS) + ".")
    w, h = upscaled_size(width, height, factor)
    if w * h > max_pixels:
        raise BadInput(f"upscale: {width}x{height} x{factor:g} = {w}x{h} ({w * h:,} pixels) exceeds the pixel cap "
                       f"of {max_pixels:,} (LIKENESS_MAX_IMAGE_PIXELS); use a smaller factor or size.")
    return w, h


def upscaler_spec(name: str) -> UpscalerSpec:
    spec = UPSCALERS.get(name)
    if spec is None:
        raise BadInput(f"upscaler: unknown upscaler {name!r}; choose one of {', '.join(UPSCALERS)}.")
    return spec


def load_upscaler_descriptor(path: Path | str, spec: UpscalerSpec):
    """spandrel's descriptor for `path` (a .safetensors file), checked to be
    `spec`'s architecture and scale; errors name the file."""
    from safetensors import SafetensorError
    from spandrel import MAIN_REGISTRY, ModelLoader, UnsupportedModelError

    from .models.commands import model_command
    from .restore.spandrel_restorer import _unwrap

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelError(f"{path} is not a .safetensors file; upscaler weights are only loaded from the model "
                         f"store's converted copy (run `{model_command(spec.model)}`).")
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; run `{model_command(spec.model)}`.")
    loader = ModelLoader(device="cpu", registry=MAIN_REGISTRY)
    try:
        descriptor = loader.load_from_state_dict(_unwrap(loader.load_state_dict_from_file(path)))
    except UnsupportedModelError as exc:
        raise ModelError(f"{path} is not a known upscaler model (expected {spec.architecture}); "
                         f"re-download {spec.model}.") from exc
    except (SafetensorError, OSError, RuntimeError, KeyError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"cannot load {path}: {first} (corrupt or truncated? re-download {spec.model}).") from exc
    if descriptor.architecture.id != spec.architecture or descriptor.scale != spec.scale:
        raise ModelError(f"{path} holds a {descriptor.architecture.id} x{descriptor.scale} model, not "
                         f"{spec.architecture} x{spec.scale}; re-download {spec.model}.")
    return descriptor


class Upscaler:
    """A spandrel super-resolution model kept resident on `device`."""

    def __init__(self, spec: UpscalerSpec, store, device: str, dtype):
        import torch

        from .restore.spandrel_restorer import _run_dtype

        self.spec = spec
        self.device = torch.device(device)
        store.ensure(spec.model)
        descriptor = load_upscaler_descriptor(store.file_path(spec.model, spec.weights), spec)
        self.dtype = _run_dtype(descriptor, dtype)
        descriptor.to(self.device).to(self.dtype).eval()
        self.descriptor = descriptor
        self._lock = threading.Lock()  # one forward at a time on the shared module
        self.tiles_run: list[tuple[int, int]] = []  # (h, w) of each tile of the last call

    def _forward(self, tile: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.array(tile, np.uint8)).permute(2, 0, 1)[None]  # a writable copy
        x = x.to(self.device, self.dtype) / 255.0  # spandrel's image models take RGB in [0, 1]
        out = self.descriptor.model(x)
        out = (out.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        return out[0].permute(1, 2, 0).cpu().numpy()

    def upscale_native(self, rgb: np.ndarray, tile: int = DEFAULT_TILE, overlap: int = TILE_OVERLAP) -> np.ndarray:
        """`rgb` (H, W, 3) uint8 -> (H*s, W*s, 3) uint8, one tile at a time."""
        import torch

        if tile < 16:
            raise BadInput(f"upscale tile: {tile} px is too small; use 16 or more.")
        s = self.spec.scale
        h, w = rgb.shape[:2]
        out = np.empty((h * s, w * s, 3), np.uint8)
        self.tiles_run = []
        with self._lock, torch.inference_mode():
            for y0 in range(0, h, tile):
                for x0 in range(0, w, tile):
                    y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
                    py0, px0 = max(0, y0 - overlap), max(0, x0 - overlap)
                    py1, px1 = min(h, y1 + overlap), min(w, x1 + overlap)
                    self.tiles_run.append((py1 - py0, px1 - px0))
                    big = self._forward(rgb[py0:py1, px0:px1])
                    oy, ox = (y0 - py0) * s, (x0 - px0) * s
                    out[y0 * s:y1 * s, x0 * s:x1 * s] = big[oy:oy + (y1 - y0) * s, ox:ox + (x1 - x0) * s]
        return out

    def upscale(self, image, factor: float, tile: int = DEFAULT_TILE):
        """PIL image -> PIL image at `upscaled_size(w, h, factor)`."""
        from PIL import Image

        if factor == 1.0:
            return image
        rgb = np.asarray(image.convert("RGB"), np.uint8)
        big = Image.fromarray(self.upscale_native(rgb, tile))
        size = upscaled_size(image.width, image.height, factor)
        return big if big.size == size else big.resize(size, Image.Resampling.LANCZOS)

    def unload(self) -> None:
        self.descriptor = None


def get_upscaler(engine: EngineServices, name: str) -> Upscaler:
    """The resident upscaler `name` (loaded once per engine)."""
    spec = upscaler_spec(name)
    return engine.resident("upscaler", name, lambda: Upscaler(spec, engine.store, engine.device, engine.dtype))


# ------------------------------------------------------------------ hires pass
def img2img_pipe(engine: EngineServices, pipe, units):
    """An img2img view over the resident components (no copies), with the generation's
    ControlNets when it had any (InstantID's IdentityNet); see `Engine.view`."""
    return engine.view(pipe, "img2img", units)


def hires_pass(engine: EngineServices, ctx, image, req, seed: int, index: int = 0):
    """img2img over the upscaled `image` at `req.hires_strength`, with the
    generation's prompt, identity conditioning, sampler and seed. ControlNet
    images (keypoints, pose) are resized to the new size."""
    import inspect

    from PIL import Image

    run = img2img_pipe(engine, ctx.pipe, ctx.units)
    run.scheduler = engine.scheduler(req.sampler)
    w, h = image.size
    kwargs = engine.call_kwargs(req, ctx.cond, ctx.units, w, h, seed, None, ctx.cancel, index)
    if ctx.units:
        imgs = kwargs.pop("image")

        def resize(im):
            return im.resize((w, h), Image.Resampling.BILINEAR)

        kwargs["control_image"] = [resize(i) for i in imgs] if isinstance(imgs, list) else resize(imgs)
    kwargs.update(image=image, strength=req.hires_strength)
    accepted = set(inspect.signature(run.__call__).parameters)
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return run(**kwargs).images[0]
