"""GFPGAN and CodeFormer loaded by spandrel from the model store.

Only the store's safetensors copy of the published pickle is ever loaded (spandrel
would otherwise unpickle the .pth itself). CodeFormer lives in
`spandrel_extra_arches` (non-commercial licence); it is added to a private copy
of spandrel's registry rather than installed into the global one.

Both networks take and return RGB in [-1, 1] (their training normalisation), so
the module is called directly: spandrel's generic `__call__` assumes [0, 1].
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .base import FACE_SIZE, RestorerSpec, check_fidelity


def _registry(extra: bool):
    from spandrel import MAIN_REGISTRY

    if not extra:
        return MAIN_REGISTRY
    from spandrel_extra_arches import EXTRA_REGISTRY

    registry = MAIN_REGISTRY.copy()  # copy-on-write: the global registry is untouched
    registry.add(*EXTRA_REGISTRY, ignore_duplicates=True)
    return registry


def _run_dtype(descriptor, dtype):
    """The dtype to run in: the requested one where the architecture supports it,
    else float32 (GFPGAN and CodeFormer both declare float16 unsupported)."""
    import torch

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, torch.float32)
    if dtype == torch.float16 and descriptor.supports_half:
        return torch.float16
    if dtype == torch.bfloat16 and descriptor.supports_bfloat16:
        return torch.bfloat16
    return torch.float32


# the published pickles wrap the weights as {"params_ema": ...} (training
# checkpoints may also hold "params"); flattened into a safetensors file that
# becomes a key prefix, which spandrel's own unwrapping (nested dicts only) misses.
# The EMA weights are the ones the releases are meant to be run with.
_WRAPPER_PREFIXES = ("params_ema.", "params-ema.", "params.")


def _unwrap(state: dict) -> dict:
    for prefix in _WRAPPER_PREFIXES:
        inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if inner:
            return inner
    return state


def load_descriptor(path: Path | str, spec: RestorerSpec, device: str = "cpu"):
    """Load `path` (a .safetensors file) with spandrel and check it is `spec`'s
    architecture; errors name the file."""
    from safetensors import SafetensorError
    from spandrel import ModelLoader, UnsupportedModelError

    from ..models.commands import model_command

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelError(
            f"{path} is not a .safetensors file; face-restore weights are only loaded from the "
            f"model store's converted copy (run `{model_command(spec.model)}`)."
        )
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; run `{model_command(spec.model)}`.")
    loader = ModelLoader(device="cpu", registry=_registry(spec.extra_arches))
    try:
        state = _unwrap(loader.load_state_dict_from_file(path))
        descriptor = loader.load_from_state_dict(state)
    except UnsupportedModelError as exc:
        raise ModelError(
            f"{path} is not a known face-restoration model (expected {spec.architecture}); "
            f"re-download {spec.model}."
        ) from exc
    except (SafetensorError, OSError, RuntimeError, KeyError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"cannot load {path}: {first} (corrupt or truncated? re-download {spec.model}).") from exc
    found = descriptor.architecture.id
    if found != spec.architecture:
        raise ModelError(f"{path} holds a {found} model, not {spec.architecture}; re-download {spec.model}.")
    return descriptor


class SpandrelRestorer:
    """A `FaceRestorer` backed by a spandrel model kept resident on `device`."""

    def __init__(self, spec: RestorerSpec, store, device: str, dtype):
        import torch

        self.spec = spec
        self.name = spec.name
        self.device = torch.device(device)
        store.ensure(spec.model)
        path = store.file_path(spec.model, spec.weights)  # the converted .safetensors
        descriptor = load_descriptor(path, spec)
        self.dtype = _run_dtype(descriptor, dtype)
        descriptor.to(self.device).to(self.dtype).eval()
        self.descriptor = descriptor
        self._lock = threading.Lock()  # one forward at a time on the shared module

    @property
    def architecture(self) -> str:
        return self.descriptor.architecture.id

    def _forward(self, x, fidelity: float | None):
        model = self.descriptor.model
        if self.spec.name == "codeformer":
            w = self.spec.default_fidelity if fidelity is None else fidelity
            return model(x, weight=w)[0]
        # fixed noise buffers (not fresh noise per call): the same face gives the same result
        return model(x, return_rgb=False, randomize_noise=False)[0]

    def restore_face(self, face_rgb_512: np.ndarray, fidelity: float | None = None) -> np.ndarray:
        import torch

        face = np.asarray(face_rgb_512)
        if face.shape != (FACE_SIZE, FACE_SIZE, 3) or face.dtype != np.uint8:
            raise ValueError(
                f"restore_face needs a ({FACE_SIZE}, {FACE_SIZE}, 3) uint8 face, got {face.shape} {face.dtype}"
            )
        fidelity = check_fidelity(fidelity)
        x = torch.from_numpy(np.ascontiguousarray(face)).permute(2, 0, 1)[None]
        x = x.to(self.device, torch.float32) / 127.5 - 1.0
        with self._lock, torch.inference_mode():
            out = self._forward(x.to(self.dtype), fidelity)
        out = (out.float().clamp(-1.0, 1.0) + 1.0) * 127.5
        return out[0].permute(1, 2, 0).round().to(torch.uint8).cpu().numpy()

    def unload(self) -> None:
        """Drop the model (the engine calls this when it evicts the restorer)."""
        self.descriptor = None
