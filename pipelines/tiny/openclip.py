"""Tiny OpenCLIP pack ("open-clip") for the catalog entry clip-vit-b-32-laion.

Writes the two files the published repo (laion/CLIP-ViT-B-32-laion2B-s34B-b79K)
holds, in its format:

- `open_clip_config.json`: `{"model_cfg": ..., "preprocess_cfg": {mean, std}}`,
  json indent 4 plus a newline, as open_clip's hub export writes it. The
  model_cfg is ViT-B-32's shape shrunk (narrow, 2 layers, 64 px input); the
  vocabulary (49408) and context length (77) stay, so open_clip's own BPE
  tokenizer (shipped inside its wheel) drives the text tower unchanged.
- `open_clip_model.safetensors`: the state dict of open_clip's `CLIP` built from
  that config, with the published key names (`visual.conv1.weight`,
  `visual.class_embedding`, `visual.transformer.resblocks.N.attn.in_proj_weight`,
  `transformer.resblocks.N...`, `token_embedding.weight`, `ln_final.*`,
  `text_projection`, `logit_scale`, ...).

Because the config travels with the weights, the real loader
(`open_clip.create_model_and_transforms("local-dir:<folder>")`, strict loading)
reads the tiny pack exactly as it reads the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import pack

SEED = 1234
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
}


def config_json(model_cfg: dict) -> str:
    """The open_clip_config.json text for `model_cfg` (published layout)."""
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}
    return json.dumps(cfg, indent=4) + "\n"


@pack("open-clip", version=1)
def build(dest: Path) -> None:
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "open_clip_config.json").write_text(config_json(TINY_MODEL_CFG))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = CLIP(**json.loads(json.dumps(TINY_MODEL_CFG)))
        # open_clip leaves some vision parameters at their constructor values;
        # perturb every tensor so the towers are a real function of the input
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name != "logit_scale":
                    p.add_(torch.randn_like(p) * 0.02)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(dest / "open_clip_model.safetensors"))
