"""Opening the model store the way the app uses it.

When the run profile builds its models (`settings.profile.builds_models`: demo
mode), the store builds each model's tiny pack (`pipelines/tiny`: random weights
in the published layouts) in place of a download. The store itself
(`pipelines/models/`) sits below everything and knows nothing of the tiny packs;
this is where the two meet, so every front door and the engine open the store
here.
"""

from __future__ import annotations


def open_store(settings, catalog=None):
    """A `ModelStore` for `settings` (its catalog, else the shipped one); when
    `settings.profile` builds its models it is given the tiny packs to build."""
    from .models.store import ModelStore

    demo_packs = None
    if settings.profile.builds_models:
        from . import tiny

        demo_packs = tiny
    return ModelStore(settings, catalog, demo_packs=demo_packs)
