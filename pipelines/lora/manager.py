"""User LoRAs on the resident pipeline: load once, activate the requested ones.

The manager's parts:
- `files.py`: which file a LoRA name means (loras/, its subfolders, other apps'
  folders) and what a name may be;
- `compatibility.py`: whether a file fits the pipeline, checked before loading;
- `adapters.py`: the peft/diffusers internals that switch and remove adapters;
- here: `LoraManager`, the bookkeeping of what is loaded into which pipeline
  and what is active.

Invariants:
- Only `<loras_dir>/<name>.safetensors` (or `<loras_dir>/<folder>/<name>.safetensors`,
  a few levels deep, resolved inside loras/) is ever read; a pickle of that name
  (.ckpt/.pt/.bin/.pth) is refused; every part of a name is a single safe path component.
- A LoRA is checked against the pipeline (every key maps to an existing module
  of the right shape) before `load_lora_weights` touches it, so an incompatible
  file (SD1.5 on SDXL, unknown keys, wrong shapes) leaves the pipeline as it was.
- Loaded LoRAs stay resident as peft adapters (`user_<name>`); a request
  activates exactly the ones it names. The others keep weight 0, so they add
  exactly nothing even if peft re-activates them (it does when another adapter
  is deleted): with no LoRA requested the output equals the base model's.
- An identity method's own adapter (FaceID's `faceid_0`) stays active; the
  manager keeps the active user LoRAs' weights per pipeline (`active_weights`)
  and the engine hands them to the method (`IdentityMethod.refresh_adapters`).

Every name of `files.py` and `compatibility.py` is importable from here as before.
"""

from __future__ import annotations

import hashlib
import re
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInput, ModelError
from ..models.hashing import file_problem, sha256_file
from . import kohya
from .adapters import adapter_weight, deactivate_all, delete_adapter, peft_adapters, set_adapter_weights
from .compatibility import (
    TEXT_PARTS,
    SplitLora,
    _base_layer,
    _components,
    _shape_problem,
    _text_modules,
    _unet_peft_keys,
    compatibility_problem,
    nonfinite_tensor,
    split_lora,
)
from .files import (
    MAX_LORA_DEPTH,
    PICKLE_SUFFIXES,
    _in_subfolders,
    external_loras,
    find_lora,
    list_loras,
    lora_path,
    normalize_name,
    normalize_ref,
    user_lora_names,
)

__all__ = [
    "ADAPTER_PREFIX", "MAX_LORA_DEPTH", "PICKLE_SUFFIXES", "TEXT_PARTS", "AppliedLoras", "LoraManager", "SplitLora",
    "_base_layer", "_components", "_current_weight", "_in_subfolders", "_shape_problem", "_text_modules",
    "_unet_peft_keys", "adapter_name", "compatibility_problem", "external_loras", "find_lora", "list_loras",
    "lora_path", "nonfinite_tensor", "normalize_name", "normalize_ref", "split_lora", "user_lora_names",
]

ADAPTER_PREFIX = "user_"


@dataclass
class AppliedLoras:
    """What `LoraManager.apply` left active: LoRA name → weight, their trigger
    words, and the sha256 of each file."""

    weights: dict[str, float] = field(default_factory=dict)
    triggers: list[str] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)


@dataclass
class _Resident:
    adapter: str
    sha256: str
    triggers: list[str]
    stat: tuple[int, int]  # (size, mtime_ns) when hashed


def adapter_name(name: str) -> str:
    """A peft adapter name for LoRA `name` (module-dict safe: no dots)."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if safe != name:  # keep distinct names distinct ("a.b" vs "a_b")
        safe += "_" + hashlib.sha256(name.encode()).hexdigest()[:6]
    return ADAPTER_PREFIX + safe


def _load_text_lora(model, modules: dict, adapter: str) -> None:
    """Inject a text-encoder LoRA with peft directly (transformers' own adapter
    API insists on a newer peft than diffusers needs)."""
    from collections import Counter

    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    ranks = {m: int(t["B"].shape[1]) for m, t in modules.items()}
    alphas = {m: float(t["alpha"]) if "alpha" in t else float(ranks[m]) for m, t in modules.items()}
    r0 = Counter(ranks.values()).most_common(1)[0][0]
    a0 = Counter(alphas.values()).most_common(1)[0][0]
    config = LoraConfig(
        # peft annotates lora_alpha as int; it only divides it by r, and kohya files store fractional alphas
        r=r0, lora_alpha=a0,  # type: ignore[arg-type]
        target_modules="^(" + "|".join(re.escape(m) for m in modules) + ")$",
        rank_pattern={re.escape(m): r for m, r in ranks.items() if r != r0},
        alpha_pattern={re.escape(m): a for m, a in alphas.items() if a != a0},
    )
    with warnings.catch_warnings():  # "already found a peft_config": several adapters are intended
        warnings.simplefilter("ignore", UserWarning)
        inject_adapter_in_model(config, model, adapter_name=adapter)
    dtype = next(model.parameters()).dtype
    sd = {}
    for m, t in modules.items():
        sd[f"{m}.lora_A.weight"] = t["A"].to(dtype)
        sd[f"{m}.lora_B.weight"] = t["B"].to(dtype)
    result = set_peft_model_state_dict(model, sd, adapter_name=adapter)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"unexpected keys {unexpected[:2]}")


_peft_adapters = peft_adapters
_current_weight = adapter_weight


def _drop_adapter(pipe, adapter: str) -> None:
    """Remove a (possibly partly) loaded adapter from every component."""
    delete_adapter(_components(pipe).values(), adapter)


class LoraManager:
    """Loads user LoRAs into a pipeline and activates the requested ones."""

    def __init__(self, settings, store=None):
        self.settings = settings
        self.store = store
        self.loras_dir = Path(settings.loras_dir)
        self._resident: dict[int, dict[str, _Resident]] = {}  # id(unet) -> name -> adapter
        self._active: dict[int, dict[str, float]] = {}  # id(unet) -> active adapter -> weight
        self._lock = threading.RLock()

    # ------------------------------------------------------------ files
    def path(self, name: str) -> Path:
        return find_lora(self.settings, name)

    def available(self) -> list[str]:
        return user_lora_names(self.settings)

    def _read_checked(self, name: str, path: Path, pipe) -> dict:
        from safetensors.torch import load_file

        problem = file_problem(path)
        if problem:
            raise BadInput(f"LoRA {path} {problem}.")
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise BadInput(f"LoRA {path} cannot be read as safetensors ({exc}).") from exc
        bad = nonfinite_tensor(state)
        if bad is not None:
            raise BadInput(f"LoRA {path} holds NaN or infinite values (tensor {bad!r}); the file is damaged "
                           "(re-download or retrain it); nothing was loaded.")
        problem = compatibility_problem(pipe, state)
        if problem:
            family = "SDXL" if getattr(pipe, "text_encoder_2", None) is not None else "SD1.5"
            raise BadInput(f"LoRA {path} does not fit the {family} base model: {problem}; "
                           "nothing was loaded.")
        return state

    # ---------------------------------------------------------- loading
    def load(self, pipe, name: str, path: Path | None = None, adapter: str | None = None) -> _Resident:
        """Load LoRA `name` into `pipe` once (reloaded when the file changed).
        With `path` and `adapter`: a LoRA from the model store (a speed mode's),
        checked like a user file and kept under its own adapter name."""
        with self._lock:
            if path is None:
                name = normalize_ref(name)
                path = self.path(name)
            table = self._resident.setdefault(id(pipe.unet), {})
            st = path.stat()
            stat = (st.st_size, st.st_mtime_ns)
            have = table.get(name)
            adapter = adapter or adapter_name(name)
            loaded = any(adapter in _peft_adapters(m) for m in _components(pipe).values())
            if have is not None and have.stat == stat and loaded:
                return have
            sha = sha256_file(path)
            if have is not None and have.sha256 == sha and loaded:
                have.stat = stat
                return have
            state = self._read_checked(name, path, pipe)
            triggers = kohya.trigger_words(kohya.read_metadata(path), path)  # checked before the pipeline changes
            if any(adapter in _peft_adapters(m) for m in _components(pipe).values()):
                _drop_adapter(pipe, adapter)  # the file changed: replace the old weights
            parts = split_lora(pipe, state)
            try:
                if parts.unet:
                    pipe.load_lora_weights(parts.unet, adapter_name=adapter)
                for comp, modules in parts.text.items():
                    _load_text_lora(getattr(pipe, comp), modules, adapter)
            except Exception as exc:
                _drop_adapter(pipe, adapter)
                raise ModelError(f"LoRA {path} could not be loaded ({' '.join(str(exc).split())[:200]}).") from exc
            resident = _Resident(adapter, sha, triggers, stat)
            table[name] = resident
            # a fresh adapter is active at weight 1 until `apply` sets the weights
            return resident

    # --------------------------------------------------------- activating
    def apply(self, pipe, loras: Iterable, store_loras: dict | None = None) -> AppliedLoras:
        """Activate exactly `loras` (LoraSpec or (name, weight)) on `pipe`; every
        other user LoRA gets weight 0; adapters not ours (an identity method's)
        stay active with their current weight. If a LoRA cannot be used, the
        previously active set is restored and the error raised.
        `store_loras`: adapter name -> (file, weight) of LoRAs from the model store
        (a speed mode's), active beside the user LoRAs and kept in the same
        bookkeeping (`active_weights`), so an identity method that
        re-sets its own adapter keeps them on; not listed in the result."""
        with self._lock:
            wanted: dict[str, float] = {}
            for spec in loras or []:
                name, weight = (spec.name, spec.weight) if hasattr(spec, "name") else (spec[0], float(spec[1]))
                wanted[normalize_ref(name)] = float(weight)  # last one wins
            for name in wanted:  # every file is found before anything is loaded
                self.path(name)
            previous = self.active_weights(pipe)
            residents: dict[str, _Resident] = {}
            fixed: dict[str, float] = {}
            try:
                for name in wanted:
                    residents[name] = self.load(pipe, name)
                for adapter, (path, weight) in (store_loras or {}).items():
                    # "/" never occurs in a user LoRA name: the two kinds cannot collide
                    fixed[self.load(pipe, "/" + adapter, Path(path), adapter).adapter] = float(weight)
            except Exception:
                if residents or fixed:  # loading activates the new adapter: put the old set back
                    self._activate(pipe, previous)
                raise
            self._activate(pipe, {**{residents[n].adapter: w for n, w in wanted.items()}, **fixed})
            triggers: list[str] = []
            for n in wanted:
                for t in residents[n].triggers:
                    if t not in triggers:
                        triggers.append(t)
            return AppliedLoras(weights=dict(wanted), triggers=triggers,
                                hashes={n: residents[n].sha256 for n in wanted})

    def _activate(self, pipe, active: dict[str, float]) -> None:
        """Make `active` (adapter -> weight) the active user LoRAs: the other user
        adapters to weight 0, the non-user adapters active at their weight."""
        table = self._resident.get(id(pipe.unet), {})
        present: set[str] = set()
        for model in _components(pipe).values():
            present |= _peft_adapters(model)
        for n in [n for n, r in table.items() if r.adapter not in present]:
            table.pop(n, None)  # removed from the pipeline behind our back
        ours = {r.adapter for r in table.values()}
        active = {a: w for a, w in active.items() if a in ours}
        others = sorted(a for a in present if a not in ours)
        if ours or others:
            other_w = {a: adapter_weight(pipe.unet, a) for a in others}
            idle = sorted(ours - set(active))
            if idle:  # kept at 0 for good: adds exactly nothing even if peft re-activates it
                set_adapter_weights(pipe, {a: 0.0 for a in idle})
            names = [*active, *others]
            if names:
                set_adapter_weights(pipe, {**active, **other_w})
            else:  # none wanted: no LoRA layer runs (at weight 0 each would still cost two matmuls)
                deactivate_all(_components(pipe).values())
        self._active[id(pipe.unet)] = dict(active)

    def active_weights(self, pipe) -> dict[str, float]:
        """The LoRA adapters this manager has active on `pipe` (adapter -> weight)."""
        with self._lock:
            return dict(self._active.get(id(pipe.unet), {}))

    def forget(self, pipe) -> None:
        """Drop the bookkeeping of `pipe` (it is being released)."""
        with self._lock:
            self._resident.pop(id(pipe.unet), None)
            self._active.pop(id(pipe.unet), None)
