"""PuLID for SDXL (ToTheBeginning/PuLID): the ID attention processors
(`attention`), the ID encoders (`encoders`), the EVA02-CLIP visual tower
(`eva`) and the face preparation (`preprocess`). The method itself is
`pipelines/identity/pulid.py`."""
