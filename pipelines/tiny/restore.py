"""Tiny face-restoration packs ("gfpgan", "codeformer").

Each writes the one file its catalog entry lists, as a torch.save pickle shaped
like the published release: `{"params_ema": state_dict}`, the state dict having
the published key names and shapes, so spandrel's `ModelLoader` detects the
architecture from the keys (after the store converts the pickle to safetensors)
exactly as it does for the real file.

- GFPGANv1.4.pth: the GFPGANv1Clean network (512 px, StyleGAN2 decoder, channel
  multiplier 2). spandrel builds it with fixed hyperparameters, so it cannot be
  scaled down: ~87 M parameters. Stored as float16 (spandrel copies the values
  into its float32 module), ~175 MB instead of ~350 MB.
- codeformer.pth: CodeFormer's VQ encoder/generator are fixed by spandrel too
  (~64 M parameters), but the transformer is read from the keys: one layer,
  embedding 64 (8 heads of 8), a 64-entry codebook, and one fusion block (the
  256 px scale) so the fidelity weight `w` still changes the output. float16,
  ~130 MB.

The weights are the networks' own random initialisation under a fixed seed: a
deterministic model that maps a face to a different (noisy) face, which proves
the wiring, not the quality.
"""

from __future__ import annotations

from pathlib import Path

from . import pack

SEED_GFPGAN = 1404
SEED_CODEFORMER = 2022

# the published file names (assets/models.toml: gfpgan-v1.4, codeformer)
GFPGAN_FILE = "GFPGANv1.4.pth"
CODEFORMER_FILE = "codeformer.pth"

# smallest CodeFormer that spandrel still detects and builds (see module doc)
CODEFORMER_TINY = dict(dim_embd=64, n_head=8, n_layers=1, codebook_size=64, latent_size=256, connect_list=["256"])


def _seeded_state_dict(make, seed: int) -> dict:
    """The float16 state dict of `make()` built under `seed`, without touching the
    caller's global RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = make()
    return {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}


def gfpgan_state_dict() -> dict:
    from spandrel.architectures.GFPGAN import GFPGAN

    def make():
        # the hyperparameters of GFPGAN v1.3/v1.4 (what spandrel assumes)
        return GFPGAN(
            out_size=512,
            num_style_feat=512,
            channel_multiplier=2,
            decoder_load_path=None,
            fix_decoder=False,
            num_mlp=8,
            input_is_latent=True,
            different_w=True,
            narrow=1,
            sft_half=True,
        )

    return _seeded_state_dict(make, SEED_GFPGAN)


def codeformer_state_dict() -> dict:
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    return _seeded_state_dict(lambda: CodeFormer(**CODEFORMER_TINY), SEED_CODEFORMER)


def _save_pickle(state: dict, path: Path) -> None:
    import torch

    torch.save({"params_ema": state}, path)


@pack("gfpgan", version=1)
def build_gfpgan(dest: Path) -> None:
    _save_pickle(gfpgan_state_dict(), Path(dest) / GFPGAN_FILE)


@pack("codeformer", version=1)
def build_codeformer(dest: Path) -> None:
    _save_pickle(codeformer_state_dict(), Path(dest) / CODEFORMER_FILE)
