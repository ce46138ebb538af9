"""User LoRAs on the resident pipeline: find, check, load once, activate.

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
- The peft/diffusers internals used to switch and remove adapters live in
  `lora/adapters.py`.
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
from ..paths import check_name, confine
from . import kohya
from .adapters import adapter_weight, deactivate_all, delete_adapter, peft_adapters, set_adapter_weights

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
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


def normalize_name(name: str, field: str = "LoRA name") -> str:
    """`name` as a LoRA name: a safe single path component, without `.safetensors`.
    Pickle suffixes are refused here already."""
    if isinstance(name, str):
        for suffix in PICKLE_SUFFIXES:
            if name.lower().endswith(suffix):
                raise BadInput(
                    f"{field} {name!r} is an unsafe pickle (it can run code when loaded); "
                    "only .safetensors LoRAs are accepted: convert it to .safetensors first."
                )
        if name.lower().endswith(".safetensors"):
            name = name[: -len(".safetensors")]
    return check_name(name, field)


MAX_LORA_DEPTH = 4  # folders below loras/ searched for LoRAs


def normalize_ref(name: str, field: str = "LoRA name") -> str:
    """A reference to a LoRA: `NAME` or `FOLDER/NAME` (a file in a subfolder of
    loras/, as A1111 and ComfyUI keep them), each part a safe path component."""
    if isinstance(name, str) and "/" in name.strip("/"):
        parts = name.strip("/").split("/")
        if len(parts) > MAX_LORA_DEPTH + 1:
            raise BadInput(f"{field} {name!r} is nested more than {MAX_LORA_DEPTH} folders deep.")
        return "/".join([check_name(x, field) for x in parts[:-1]] + [normalize_name(parts[-1], field)])
    return normalize_name(name, field)


def _in_subfolders(root: Path, name: str) -> list[Path]:
    """`<root>/**/<name>.safetensors` (not hidden, at most MAX_LORA_DEPTH deep),
    each confined to `root` (a symlinked folder pointing elsewhere is skipped)."""
    found = []
    for rel in list_loras(root):
        if "/" in rel and rel.rsplit("/", 1)[1] == name:
            found.append(confine(root, f"{rel}.safetensors", "LoRA name"))
    return found


def lora_path(loras_dir: Path | str, name: str) -> Path:
    """The file of LoRA `name`: `<loras_dir>/<name>.safetensors`, or a subfolder's
    `<name>.safetensors` when exactly one holds it (`<lora:name:w>` names only the
    file, as in A1111), confined to `loras_dir`. Raises `BadInput` when it is
    missing, ambiguous or only a pickle exists."""
    name = normalize_ref(name)
    root = Path(loras_dir)
    path = confine(root, f"{name}.safetensors", "LoRA name")
    if path.is_file():
        return path
    if "/" not in name:
        found = _in_subfolders(root, name)
        if len(found) == 1:
            return found[0]
        if found:
            rels = ", ".join(sorted(p.relative_to(root.resolve()).with_suffix("").as_posix() for p in found))
            raise BadInput(f"LoRA {name!r} is in several folders ({rels}); name one with FOLDER/NAME.")
    for suffix in PICKLE_SUFFIXES:
        other = confine(root, f"{name}{suffix}", "LoRA name")
        if other.exists():
            raise BadInput(
                f"LoRA {other} is an unsafe pickle ({suffix}); only .safetensors LoRAs are loaded: "
                "convert it to .safetensors."
            )
    have = list_loras(root)
    hint = f"available: {', '.join(have)}" if have else "the folder has no .safetensors LoRAs"
    raise BadInput(f"LoRA {name!r} not found: expected {path} ({hint}).")


def list_loras(loras_dir: Path | str) -> list[str]:
    """The LoRAs a user can pick: names of the `<loras_dir>/*.safetensors` files
    (pickles are never listed, nor hidden files such as a training's temp files)."""
    root = Path(loras_dir)
    if not root.is_dir():
        return []
    resolved = root.resolve()
    names = []
    for p in root.rglob("*.safetensors"):
        rel = p.relative_to(root)
        if len(rel.parts) > MAX_LORA_DEPTH + 1 or any(x.startswith(".") for x in rel.parts):
            continue
        try:  # subfolders are searched only where they stay inside loras/
            inside = resolved in p.resolve().parents
        except OSError:
            continue
        if inside and p.is_file():
            names.append(rel.with_suffix("").as_posix())
    return sorted(names, key=lambda n: (n.count("/"), n))


# ---------------------------------------------------------------- compatibility
TEXT_PARTS = {"lora_te_": "text_encoder", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
_TE_SUFFIX = re.compile(r"^(?P<module>.+?)\.(?:(?P<kind>lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up|"
                        r"lora_linear_layer\.down|lora_linear_layer\.up)\.weight|(?P<alpha>alpha))$")


@dataclass
class SplitLora:
    """A LoRA state dict split by pipeline part: the UNet keys as in the file
    (diffusers converts them), the text-encoder weights per module."""

    unet: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)  # component -> module path -> {"A", "B", "alpha"}


def _components(pipe) -> dict[str, object]:
    return {c: getattr(pipe, c) for c in ("unet", "text_encoder", "text_encoder_2") if getattr(pipe, c, None) is not None}


def _text_modules(model) -> dict[str, str]:
    """kohya name (without the lora_teN_ prefix) -> module path, for every linear
    layer of a CLIP text encoder (kohya writes the `text_model.` prefix)."""
    import torch

    table = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or isinstance(getattr(module, "base_layer", None), torch.nn.Linear):
            if ".lora_" in name or name.endswith(("base_layer", "lora_A", "lora_B")):
                continue
            full = name if name.startswith("text_model.") else "text_model." + name
            table[full.replace(".", "_")] = name
    return table


def split_lora(pipe, state: dict) -> SplitLora:
    """Split `state` into UNet and text-encoder parts; raise ValueError on keys
    that belong to no part of an SDXL pipeline or name no text-encoder layer."""
    comps = _components(pipe)
    out = SplitLora()
    tables: dict[str, dict[str, str]] = {}
    for key, tensor in state.items():
        if key.startswith("lora_unet_") or key.startswith("unet."):
            out.unet[key] = tensor
            continue
        comp, rest, kohya_style = None, None, False
        for prefix, part in TEXT_PARTS.items():
            if key.startswith(prefix):
                comp, rest, kohya_style = part, key[len(prefix):], True
                break
        else:
            for part in ("text_encoder_2", "text_encoder"):
                if key.startswith(part + "."):
                    comp, rest = part, key[len(part) + 1:]
                    break
        if comp is None:
            raise ValueError(f"key {key!r} belongs to no part of an SDXL pipeline")
        if comp not in comps:
            raise ValueError(f"key {key!r} is for {comp}, which this pipeline does not have")
        m = _TE_SUFFIX.match(rest)
        if m is None:
            raise ValueError(f"key {key!r} is not a LoRA weight")
        model = comps[comp]
        if kohya_style:
            table = tables.setdefault(comp, _text_modules(model))
            module = table.get(m["module"])
        else:
            module = m["module"]
            if not hasattr(model, "text_model"):
                module = module.removeprefix("text_model.")
            module = module if _base_layer(model, module) is not None else None
        if module is None:
            raise ValueError(f"key {key!r} names no layer of {comp}")
        slot = "alpha" if m["alpha"] else ("A" if m["kind"] in ("lora_A", "lora_down", "lora.down", "lora_linear_layer.down") else "B")
        out.text.setdefault(comp, {}).setdefault(module, {})[slot] = tensor
    for comp, modules in out.text.items():
        for module, parts in modules.items():
            if "A" not in parts or "B" not in parts:
                raise ValueError(f"{comp}.{module} has only one of its two LoRA matrices")
    return out


def nonfinite_tensor(state: dict) -> str | None:
    """The key of the first floating-point tensor holding NaN or inf, or None.
    (Such a LoRA turns every image black or grey without any error.)"""
    import torch

    for key, tensor in state.items():
        if torch.is_floating_point(tensor) and not bool(torch.isfinite(tensor).all()):
            return key
    return None


def _unet_peft_keys(pipe, unet_state: dict) -> dict:
    """The UNet part in peft key form (`module.lora_A.weight`), through
    diffusers' own converters (what `load_lora_weights` will do)."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    converted, _alphas = pipe.lora_state_dict(dict(unet_state), unet_config=pipe.unet.config)
    sub = {k[len("unet."):]: v for k, v in converted.items() if k.startswith("unet.")}
    stray = [k for k in converted if not k.startswith("unet.")]
    if stray:
        raise ValueError(f"key {stray[0]!r} is not a UNet LoRA weight")
    if sub and "lora_A" not in next(iter(sub)):
        sub = convert_unet_state_dict_to_peft(sub)
    return sub


def _base_layer(model, path: str):
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return getattr(module, "base_layer", module)  # peft wraps a layer once an adapter is on it


def _shape_problem(comp: str, module_path: str, layer, kind: str, tensor) -> str | None:
    import torch

    if layer is None:
        return f"it targets {comp}.{module_path}, which this SDXL pipeline does not have (an SD1.5 LoRA?)"
    if isinstance(layer, torch.nn.Linear):
        want_in, want_out = layer.in_features, layer.out_features
    elif isinstance(layer, torch.nn.Conv2d):
        want_in, want_out = layer.in_channels, layer.out_channels
    else:
        return f"it targets {comp}.{module_path}, a {type(layer).__name__} and not a linear or conv layer"
    shape = tuple(tensor.shape)
    if kind == "A" and (len(shape) < 2 or shape[1] != want_in):
        return f"its {comp}.{module_path} down weight is {shape}, the layer takes {want_in} inputs"
    if kind == "B" and (len(shape) < 2 or shape[0] != want_out):
        return f"its {comp}.{module_path} up weight is {shape}, the layer has {want_out} outputs"
    return None


def compatibility_problem(pipe, state: dict) -> str | None:
    """Why `state` (a LoRA state dict) cannot be loaded into `pipe`, or None.
    Checks that every LoRA module exists in the pipeline with matching shapes."""
    if not state:
        return "it holds no tensors"
    try:
        parts = split_lora(pipe, state)
        unet = _unet_peft_keys(pipe, parts.unet) if parts.unet else {}
    except Exception as exc:  # diffusers' converters raise ValueError/KeyError on foreign layouts
        return f"its keys are not a LoRA layout for SDXL ({' '.join(str(exc).split())[:200]})"
    if not unet and not parts.text:
        return "it has no LoRA weights for the UNet or the text encoders"
    for key, tensor in unet.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            if key.endswith((".alpha", "lora_magnitude_vector")):
                continue
            return f"it has a key {key!r} that is not a LoRA weight"
        module_path, kind = key.split(".lora_", 1)
        problem = _shape_problem("unet", module_path, _base_layer(pipe.unet, module_path), kind[0], tensor)
        if problem:
            return problem
    for comp, modules in parts.text.items():
        model = getattr(pipe, comp)
        for module_path, tensors in modules.items():
            layer = _base_layer(model, module_path)
            for kind in ("A", "B"):
                problem = _shape_problem(comp, module_path, layer, kind, tensors[kind])
                if problem:
                    return problem
    return None


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
        r=r0, lora_alpha=a0,
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
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"unexpected keys {result.unexpected_keys[:2]}")


_peft_adapters = peft_adapters
_current_weight = adapter_weight


def _drop_adapter(pipe, adapter: str) -> None:
    """Remove a (possibly partly) loaded adapter from every component."""
    delete_adapter(_components(pipe).values(), adapter)


def external_loras(settings) -> dict[str, Path]:
    """LoRAs in other apps' folders (A1111, ComfyUI, Fooocus, named in
    extra_model_paths.yaml): name (file stem) -> file, .safetensors only. They are
    read in place and never modified; a name also in loras/ is the local one."""
    from ..models.external import found_files

    out: dict[str, Path] = {}
    for path in found_files(settings, "loras"):
        out.setdefault(path.stem, path)
    return out


def user_lora_names(settings) -> list[str]:
    """Every LoRA a user can pick: loras/ first, then other apps' folders."""
    local = list_loras(settings.loras_dir)
    return local + sorted(n for n in external_loras(settings) if n not in local)


def find_lora(settings, name: str) -> Path:
    """The file of LoRA `name` in loras/ (see `lora_path`), else in other apps'
    folders; the error is loras/'s when neither has it."""
    try:
        return lora_path(settings.loras_dir, name)
    except BadInput:
        other = external_loras(settings).get(normalize_ref(name))
        if other is None or not other.is_file():
            raise  # the loras/ message names what exists there
        return other


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
