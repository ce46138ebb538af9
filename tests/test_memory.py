"""`free_memory` hands cached accelerator blocks back on every backend it knows."""

from __future__ import annotations

import torch

from pipelines.memory import free_memory, is_oom


def test_free_memory_empties_the_mps_cache_when_mps_is_there(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: calls.append("mps"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    free_memory()
    assert calls == ["mps"]


def test_free_memory_leaves_mps_alone_without_it(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: calls.append("mps"))
    free_memory()
    assert calls == []


def test_is_oom_recognises_torch_out_of_memory_errors():
    assert is_oom(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("shape mismatch"))
