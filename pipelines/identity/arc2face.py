"""Arc2Face (SD1.5): the ArcFace embedding is the whole prompt.

foivospar/Arc2Face fine-tunes both the SD1.5 UNet and the CLIP ViT-L text
encoder so that the fixed prompt "photo of a id person", with the face's
L2-normalised ArcFace embedding written (zero-padded to the encoder width) into
the token row of "id", conditions the image. There is no free text and no
adapter to attach: both modules replace the base's (README "Usage",
`arc2face/utils.py` `project_face_embs`, `arc2face/models.py`
`CLIPTextModelWrapper`, `gradio_demo/app.py`).

What is computed, as the reference does it:
- the recogniser is Arc2Face's own `arcface.onnx` (WebFace42M), not antelopev2's
  glintr100 (catalog `arc2face-arcface`); the identity's normed embedding;
- prompt tokens from the base's SD1.5 tokenizer, padded to 77; the token
  embeddings go through the encoder's embeddings layer, the "id" row is replaced
  (a forward hook on `get_input_embeddings()`, so the encoder's own position
  embeddings, causal encoder and final LayerNorm follow), `last_hidden_state` is
  `prompt_embeds`. The published wrapper class is not ported: its
  transformers-4 imports do not exist in transformers 5, and `CLIPTextModel`
  loads the published keys unchanged;
- the negative side is the diffusers default for a pipeline given only
  `prompt_embeds`: "" encoded by the (Arc2Face) text encoder (the demo passes no
  negative);
- DPM-Solver++ (diffusers `DPMSolverMultistepScheduler` on the SD1.5 config),
  25 steps, guidance 3.0, 512x512: the README and demo defaults.

The request's prompt is ignored (the front doors say so). A negative prompt or
user LoRAs cannot apply (there is no text to weigh against, and no trigger word
can reach the model): a clear error rather than a silent drop.

Scale: Arc2Face has no strength. 1 (the default) is Arc2Face, 0 is the plain
SD1.5 base (its own UNet, text encoder and the request's prompt); anything else
is refused.

Speed: `--speed turbo` is the README's LCM-LoRA mode: latent-consistency/
lcm-lora-sdv1-5 (catalog `lcm-lora-sdv1-5`) at weight 1 on Arc2Face's UNet,
`LCMScheduler` from the pipeline's scheduler config, 2 steps (the gradio demo
offers 3), guidance 1.0 (no unconditional branch). The LoRA is a named peft
adapter kept beside the UNet, not fused into it, so quality mode (weight 0)
and unload give Arc2Face's and the base's exact outputs back; a fused LoRA
computes the same up to float rounding. `fast` has no published Arc2Face
counterpart and is refused.

Licence: MIT (code and weights); the insightface detector makes it research-only.
"""

from __future__ import annotations

from ..errors import BadInput, ModelError
from ..types import SpeedMode
from .base import Conditioning, IdentityMethod

MODEL = "arc2face"
RECOGNISER = "arc2face-arcface"
PROMPT = "photo of a id person"  # arc2face/utils.py project_face_embs
ID_WORD = "id"
EMBED_DIM = 512  # ArcFace
PROMPT_IGNORED = "the prompt is ignored: Arc2Face conditions on the face embedding only"


def id_token(tokenizer) -> int:
    """The one token of "id"; a tokenizer that splits it cannot carry Arc2Face."""
    ids = tokenizer.encode(ID_WORD, add_special_tokens=False)
    if len(ids) != 1:
        raise ModelError(f"the base's tokenizer splits {ID_WORD!r} into {len(ids)} tokens; Arc2Face needs the "
                         "SD1.5 CLIP tokenizer, in which it is one token.")
    return int(ids[0])


def project_face_embs(tokenizer, text_encoder, face_emb):
    """`prompt_embeds` [N, 77, hidden] for unit ArcFace embeddings `face_emb` [N, 512]:
    the prompt's token embeddings with the "id" row replaced by the embedding
    zero-padded to the encoder width, through the encoder (one pass per face, as
    the reference's mask is one prompt wide)."""
    import torch
    import torch.nn.functional as F

    hidden = int(text_encoder.config.hidden_size)
    if hidden <= EMBED_DIM:
        raise ModelError(f"the Arc2Face text encoder is {hidden} wide; it must be wider than the {EMBED_DIM}-d "
                         "ArcFace embedding it carries.")
    device = text_encoder.device
    ids = tokenizer(PROMPT, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    mask = ids[0] == id_token(tokenizer)
    outs = []
    for face in face_emb:
        padded = F.pad(face.to(device, torch.float32), (0, hidden - EMBED_DIM))

        def put_face(module, args, out, padded=padded):
            out = out.clone()
            out[:, mask] = padded.to(out.dtype)
            return out

        handle = text_encoder.get_input_embeddings().register_forward_hook(put_face)
        try:
            with torch.no_grad():
                outs.append(text_encoder(ids)[0])
        finally:
            handle.remove()
    return torch.cat(outs)


class Arc2Face(IdentityMethod):
    name = "arc2face"
    label, title = "Arc2Face (SD1.5, no prompt)", "Arc2Face"
    help = "the ArcFace embedding is the whole prompt (SD1.5): tightest likeness, the text prompt is ignored"
    base = "sd15"
    required_models = (MODEL, RECOGNISER)
    recognizer = RECOGNISER
    default_scale = 1.0
    replaces_prompt = True
    # README / gradio_demo/app.py: DPMSolverMultistepScheduler.from_config(SD1.5), 25 steps, cfg 3.0
    recipe_defaults = {"sampler": "dpmpp_2m", "steps": 25, "cfg": 3.0}
    # README "LCM-LoRA": LCMScheduler, 2 steps, guidance 1.0 (the demo's slider allows more)
    speed_modes = {"turbo": SpeedMode(
        "turbo", "Turbo", "Arc2Face with LCM-LoRA SD1.5, LCM sampler, 2 steps, no CFG (its README's fast mode)",
        lora="lcm-lora-sdv1-5", lora_file="pytorch_lora_weights.safetensors",
        steps=2, steps_range=(2, 8), sampler="lcm", samplers=("lcm",),
        cfg=1.0, cfg_range=(1.0, 2.0), family="sd15", adapter_id="turbo_lcm_sd15",
    )}

    def __init__(self, store, device, dtype):
        super().__init__(store, device, dtype)
        self._base = None  # (unet, text_encoder) of the pipeline before load
        self._own = None  # Arc2Face's (unet, text_encoder)

    def load(self, pipe) -> None:
        if self.loaded:
            return
        import torch
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        from ..models.bases import dtype_kwargs

        folder = self.store.ensure(MODEL)
        dtype = pipe.unet.dtype
        try:
            unet = UNet2DConditionModel.from_pretrained(folder / "arc2face", local_files_only=True,
                                                        **dtype_kwargs(dtype))
            encoder = CLIPTextModel.from_pretrained(folder / "encoder", local_files_only=True, use_safetensors=True,
                                                    dtype=dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"the Arc2Face weights in {folder} could not be loaded: {exc}") from exc
        id_token(pipe.tokenizer)  # fail at load, not mid-request
        if unet.config.cross_attention_dim != encoder.config.hidden_size:
            raise ModelError(f"Arc2Face UNet cross-attention width {unet.config.cross_attention_dim} does not match "
                             f"its encoder width {encoder.config.hidden_size} ({folder}).")
        unet.eval().requires_grad_(False)
        encoder.eval().requires_grad_(False)
        self._base = (pipe.unet, pipe.text_encoder)
        device = pipe.unet.device if not _offloaded(pipe) else torch.device("cpu")
        # transformers decorates PreTrainedModel.to with functools.wraps, whose type makes mypy want
        # the model as the first argument
        self._own = (unet.to(device), encoder.to(device))  # type: ignore[arg-type]
        _install(pipe, *self._own)
        self.loaded = True

    def unload(self, pipe) -> None:
        if not self.loaded:
            return
        _install(pipe, *self._base)
        self._base = self._own = None
        self.loaded = False

    def conditioning(self, pipe, identity, request, width, height) -> Conditioning:
        import torch

        scale = self.scale_for(request)
        if scale not in (0.0, 1.0):
            raise BadInput(f"scale {scale:g}: Arc2Face has no strength (its UNet replaces the base's); use 1 "
                           "(Arc2Face) or 0 (the plain SD1.5 base).")
        if request.loras:
            raise BadInput("loras cannot be used with method 'arc2face': it replaces the UNet and the text prompt "
                           "(no trigger word reaches it); choose another method.")
        if request.negative:
            raise BadInput("negative: method 'arc2face' takes no negative prompt (its unconditional side is the "
                           "empty prompt, as the reference); leave it empty.")
        if scale == 0.0:
            _install(pipe, *self._base)
            return Conditioning(recipe={"scale": 0.0, "arc2face": "off: the plain SD1.5 base"})
        if identity is None:
            raise BadInput("method 'arc2face' needs photos of the person.")
        _install(pipe, *self._own)
        emb = torch.as_tensor(self.embedding_for(identity), dtype=torch.float32).reshape(1, -1)
        emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
        embeds = project_face_embs(pipe.tokenizer, pipe.text_encoder, emb)
        return Conditioning(
            prompt_embeds=embeds.to(pipe.unet.dtype),
            # the CLI and the Portrait tab print `warnings` with the result
            recipe={"scale": 1.0, "prompt": PROMPT, "recognizer": RECOGNISER,
                    "warnings": [PROMPT_IGNORED]},
        )


def _offloaded(pipe) -> bool:
    return bool(getattr(pipe, "_all_hooks", None))


def _install(pipe, unet, text_encoder) -> None:
    """Make (unet, text_encoder) the pipeline's; with model CPU offload the hooks are
    rebuilt so the swapped-in modules are offloaded like the rest."""
    if pipe.unet is unet and pipe.text_encoder is text_encoder:
        return
    pipe.register_modules(unet=unet, text_encoder=text_encoder)
    if _offloaded(pipe):
        pipe.enable_model_cpu_offload(device=getattr(pipe, "_offload_device", None))
