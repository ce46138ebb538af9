"""CLIP-T: how well an image follows its prompt, as the PuLID paper reports it:
100 x the cosine between the OpenCLIP image embedding and the text embedding.

The model is the catalog entry `clip-vit-b-32-laion` (OpenCLIP ViT-B/32, LAION-2B),
loaded through open_clip's own loader from the store's folder
(`local-dir:`: `open_clip_config.json` + `open_clip_model.safetensors`, strict),
so the real model and the demo pack take the same path. It stays resident across
images; text embeddings are cached per prompt.
"""

from __future__ import annotations

import threading
from typing import Any

CLIP_MODEL = "clip-vit-b-32-laion"


class ClipScorer:
    """Prompt-following score of images; loads on first use and stays resident."""

    def __init__(self, store, device: str = "cpu", dtype=None, model: str = CLIP_MODEL):
        self.store = store
        self.device = device
        self.dtype = dtype
        self.model_name = model
        # open_clip's model, image transform and tokenizer: None until `_load`
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._texts: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _precision(self) -> str:
        import torch

        # half precision only where it runs well; the score barely moves
        if self.device == "cuda" and self.dtype in (torch.float16, torch.bfloat16):
            return "fp16" if self.dtype == torch.float16 else "bf16"
        return "fp32"

    def _load(self) -> None:
        if self._model is not None:
            return
        from ..errors import ModelError

        folder = self.store.ensure(self.model_name)
        try:
            import open_clip
        except ImportError as exc:
            raise ModelError("CLIP-T needs the open-clip-torch package; run `pip install open-clip-torch`.") from exc
        spec = f"local-dir:{folder}"
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec, device=self.device, precision=self._precision(), weights_only=True
            )
            tokenizer = open_clip.get_tokenizer(spec)
        except Exception as exc:  # a corrupt file, a config that does not match the weights
            raise ModelError(f"OpenCLIP model {self.model_name} in {folder} could not be loaded: {exc}") from exc
        model.eval()
        self._model, self._preprocess, self._tokenizer = model, preprocess, tokenizer

    def unload(self) -> None:
        with self._lock:
            self._model = self._preprocess = self._tokenizer = None
            self._texts.clear()

    def _text_embedding(self, prompt: str):
        import torch

        if prompt not in self._texts:
            tokens = self._tokenizer([prompt]).to(self.device)
            with torch.inference_mode():
                t = self._model.encode_text(tokens).float()
            self._texts[prompt] = torch.nn.functional.normalize(t, dim=-1)[0]
        return self._texts[prompt]

    def score(self, image, prompt: str) -> float:
        """100 x cos(image embedding, prompt embedding), in [-100, 100]."""
        import torch

        with self._lock:
            self._load()
            text = self._text_embedding(prompt)
            pixels = self._preprocess(image.convert("RGB")).unsqueeze(0)
            pixels = pixels.to(self.device, dtype=next(self._model.parameters()).dtype)
            with torch.inference_mode():
                v = self._model.encode_image(pixels).float()
            v = torch.nn.functional.normalize(v, dim=-1)[0]
            cos = float((v @ text).clamp(-1.0, 1.0))
        return round(100.0 * cos, 3)
