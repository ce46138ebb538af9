"""Command-line front door. Each command is a module with `register(subparsers)`
(which sets `func` on its parser) and lives in this package; `main.run` parses,
builds settings and dispatches. Nothing here imports gradio except the `ui`
command, which imports `app` lazily when it runs."""
