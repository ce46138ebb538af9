import pytest

from pipelines.errors import BadInput
from pipelines.models.catalog import load_catalog, parse_catalog

REQUIRED = {
    "sdxl-base": "sdxl",
    "sdxl-vae-fp16-fix": "vae",
    "ip-adapter-faceid-plusv2-sdxl": "ip-adapter",
    "clip-vit-h-image-encoder": "image-encoder",
    "instantid": "ip-adapter",
    "buffalo_l": "insightface",
    "antelopev2": "insightface",
    "controlnet-openpose-sdxl": "controlnet",
    "openpose-annotator": "annotator",
    "gfpgan-v1.4": "restore",
    "codeformer": "restore",
    "wplus-adapter": "wplus",
    "sd15-base": "sd15",
    "e4e-ffhq": "e4e",
}

GOOD = """
[[model]]
name = "m1"
kind = "vae"
source = "hf"
repo = "org/repo"
license = "MIT"
files = [{ path = "config.json" }]
"""


def test_real_catalog_has_every_required_model():
    cat = load_catalog()
    for name, kind in REQUIRED.items():
        assert cat.get(name).kind == kind
    # research-only models are flagged (they need an explicit acceptance)
    for name in ("ip-adapter-faceid-plusv2-sdxl", "instantid", "buffalo_l", "antelopev2", "codeformer", "wplus-adapter"):
        assert cat.get(name).research_only, name
    # insightface packs live where FaceAnalysis(root=...) looks for them
    assert cat.get("antelopev2").dirname == "insightface/models/antelopev2"
    # published pickles are converted to safetensors
    assert cat.get("instantid").files[0].convert_to == "ip-adapter.safetensors"


def test_every_model_has_a_demo_pack_registered():
    from pipelines import tiny

    packs = tiny.available()
    missing = [m.name for m in load_catalog() if m.demo_pack not in packs]
    assert not missing, f"no tiny pack for {missing}"


def test_valid_minimal_catalog_parses():
    cat = parse_catalog(GOOD)
    assert cat.get("m1").files[0].path == "config.json"


@pytest.mark.parametrize(
    "mutation, needle",
    [
        (lambda s: s.replace('license = "MIT"', 'license = "MIT"\nlicence = "typo"'), "licence"),
        (lambda s: s.replace('kind = "vae"', 'kind = "banana"'), "kind"),
        (lambda s: s.replace('{ path = "config.json" }', '{ path = "x", sha256 = "nothex" }'), "sha256"),
        (lambda s: s.replace('{ path = "config.json" }', '{ path = "../escape" }'), "files"),
        (lambda s: s.replace('{ path = "config.json" }', '{ path = "x", size = -1 }'), "size"),
        (lambda s: s.replace('repo = "org/repo"', ""), "repo"),
        (lambda s: s + s, "duplicate"),
        (lambda s: s.replace("[[model]]", "[[model"), "TOML"),
    ],
)
def test_bad_catalog_errors_name_the_key(mutation, needle):
    with pytest.raises(BadInput) as exc:
        parse_catalog(mutation(GOOD), "test.toml")
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(BadInput, match="sdxl-base"):
        load_catalog().get("nope")
