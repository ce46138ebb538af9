"""Likeness engine: headless (never imports gradio), no side effects at import.

Public API lives in submodules: `pipelines.engine.Engine`, `pipelines.requests`,
`pipelines.settings`, `pipelines.models.catalog`, `pipelines.models.store`."""

__version__ = "0.1.0"
