"""InstantID's parts below its method: the face region in the UNet's attention
(`region`). The method itself is `pipelines/identity/instantid.py`."""
