"""Strict loading of a published state dict into one of the W+ pipeline's
modules (the adapter's projection and attention layers, the face-parsing net).

Invariant: a state dict loads only when its keys are exactly the module's and
every tensor has the module's shape; otherwise one `ModelError` names the file
(or part of it) and the first missing, unexpected or mis-shaped key. Tensors
are cast to the module's own dtype. torch is not imported here.
"""

from __future__ import annotations

from ..errors import ModelError


def load_strict(module, state: dict, what: str, layout: str = "the published layout") -> None:
    """Load `state` into `module` or raise a `ModelError` naming `what` (the file,
    or the part of it) and how it differs from `layout`."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise ModelError(f"{what} does not match {layout} ({detail}).")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ModelError(f"{what}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}.")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
