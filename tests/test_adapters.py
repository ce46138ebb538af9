"""The peft/diffusers internals the app relies on to switch and remove LoRA
adapters (`pipelines/lora/adapters.py`), pinned to the installed versions, which
must be ones pyproject.toml allows. When a diffusers or peft release changes
them, these tests say which assumption broke."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import torch
from packaging.requirements import Requirement

from pipelines.lora.adapters import (
    adapter_weight,
    deactivate_all,
    delete_adapter,
    drop_empty_peft_config,
    peft_adapters,
    set_adapter_weights,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["diffusers", "peft", "transformers", "accelerate", "torch"])
def test_installed_version_is_one_pyproject_allows(package):
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    req = next(Requirement(d) for d in deps if Requirement(d).name == package)
    installed = metadata.version(package).split("+")[0]
    assert req.specifier.contains(installed, prereleases=True), (package, installed, str(req.specifier))


@pytest.fixture(scope="module")
def pipe(make_settings):
    from pipelines.models.bases import load_base_pipeline
    from pipelines.stores import open_store

    return load_base_pipeline(open_store(make_settings("adapters")), "sdxl-base", torch.float32)


def _unet_out(pipe):
    unet = pipe.unet
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    x = torch.randn(1, cfg.in_channels, 8, 8, generator=g)
    text = torch.randn(1, 4, cfg.cross_attention_dim, generator=g)
    added = {"text_embeds": torch.randn(1, pipe.text_encoder_2.config.projection_dim, generator=g),
             "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    with torch.no_grad():
        return unet(x, torch.tensor([10]), encoder_hidden_states=text, added_cond_kwargs=added).sample


def test_unet_adapters_switch_weigh_and_leave_no_trace(pipe):
    from peft import LoraConfig

    unet = pipe.unet
    before = _unet_out(pipe)
    assert peft_adapters(unet) == set()
    for name in ("a", "b"):
        cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights="gaussian")
        unet.add_adapter(cfg, adapter_name=name)
        for module in unet.modules():  # non-zero B, so an active adapter changes the output
            if hasattr(module, "lora_B") and name in module.lora_B:
                torch.nn.init.normal_(module.lora_B[name].weight, std=0.5)
    assert peft_adapters(unet) == {"a", "b"}

    set_adapter_weights(pipe, {"a": 0.5, "b": 0.0})
    assert adapter_weight(unet, "a") == pytest.approx(0.5)  # scaling = weight * alpha / r
    assert adapter_weight(unet, "b") == pytest.approx(0.0)
    assert not torch.allclose(_unet_out(pipe), before)
    set_adapter_weights(pipe, {"a": 0.0, "b": 0.0})
    assert torch.allclose(_unet_out(pipe), before, atol=1e-6)  # weight 0 adds exactly nothing
    set_adapter_weights(pipe, {"a": 1.0})
    deactivate_all([unet])  # loaded, none active: the base output
    assert peft_adapters(unet) == {"a", "b"}
    assert torch.allclose(_unet_out(pipe), before, atol=1e-6)
    set_adapter_weights(pipe, {"a": 1.0})  # and active again
    assert not torch.allclose(_unet_out(pipe), before)
    assert adapter_weight(unet, "missing") == 1.0

    delete_adapter([unet], "a")
    assert peft_adapters(unet) == {"b"}
    delete_adapter([unet], "b")
    assert not hasattr(unet, "peft_config") and not unet._hf_peft_config_loaded
    assert torch.allclose(_unet_out(pipe), before, atol=1e-6)


def test_text_encoder_adapters_injected_with_peft_are_removed(pipe):
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    enc = pipe.text_encoder
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"]), enc, adapter_name="t")
    assert peft_adapters(enc) == {"t"}
    assert any(isinstance(m, BaseTunerLayer) and "t" in m.lora_A for m in enc.modules())
    delete_adapter([enc, pipe.unet], "t")  # a model without it is left alone
    assert peft_adapters(enc) == set() and not hasattr(enc, "peft_config")
    assert not any(isinstance(m, BaseTunerLayer) and "t" in m.lora_A for m in enc.modules())


def test_an_empty_peft_config_is_dropped():
    class Model:
        peft_config: dict = {}
        _hf_peft_config_loaded = True

    m = Model()
    m.peft_config = {}
    drop_empty_peft_config(m)
    assert "peft_config" not in vars(m) and m._hf_peft_config_loaded is False
    m.peft_config = {"x": object()}
    drop_empty_peft_config(m)
    assert m.peft_config and m._hf_peft_config_loaded is False


def test_repeated_adapter_weights_skip_the_module_walk_but_changes_apply(pipe, monkeypatch):
    """`set_adapter_weights` skips a call that repeats the last one (set_adapters
    walks every module), and applies again after a weight change, a reload under
    the same name, or `deactivate_all`."""
    from peft import LoraConfig

    unet = pipe.unet
    before = _unet_out(pipe)
    calls = []
    real = type(pipe).set_adapters
    monkeypatch.setattr(type(pipe), "set_adapters", lambda self, *a, **k: (calls.append(a[0]), real(self, *a, **k)))

    def add(name):
        unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"], init_lora_weights="gaussian"),
                         adapter_name=name)
        for module in unet.modules():
            if hasattr(module, "lora_B") and name in module.lora_B:
                torch.nn.init.normal_(module.lora_B[name].weight, std=0.5)

    add("s")
    set_adapter_weights(pipe, {"s": 0.5})
    out = _unet_out(pipe)
    set_adapter_weights(pipe, {"s": 0.5})
    assert len(calls) == 1  # the repeat changed nothing and was skipped
    set_adapter_weights(pipe, {"s": 0.0})
    assert len(calls) == 2 and torch.allclose(_unet_out(pipe), before, atol=1e-6)
    set_adapter_weights(pipe, {"s": 0.5})
    assert len(calls) == 3 and torch.allclose(_unet_out(pipe), out)

    # deleted and loaded again under the same name: peft activates it at weight 1
    unet.delete_adapters(["s"])  # behind the helper's back, as a library call may do
    add("s")
    assert adapter_weight(unet, "s") == pytest.approx(1.0)
    set_adapter_weights(pipe, {"s": 0.5})
    assert len(calls) == 4 and adapter_weight(unet, "s") == pytest.approx(0.5)

    deactivate_all([unet])
    set_adapter_weights(pipe, {"s": 0.5})  # active again, not skipped
    assert len(calls) == 5 and not torch.allclose(_unet_out(pipe), before)
    delete_adapter([unet], "s")
    assert torch.allclose(_unet_out(pipe), before, atol=1e-6)
