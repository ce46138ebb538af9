"""The JSON HTTP API (/api/v1) on the UI's server, with plain HTTP (httpx):
OpenAPI schema from the typed request, jobs with progress, cancel, images by id,
list endpoints, and the UI's login on --listen."""

from __future__ import annotations

import base64
import io
import time

import httpx
import pytest
from conftest import free_port

AUTH = ("ann", "s3cret-pass")


@pytest.fixture(scope="module")
def server(make_settings):
    from app.jobs import EngineHolder
    from app.security import resolve_launch
    from app.server import serve

    settings = make_settings("api", accept_research_licenses=True)
    cfg = resolve_launch(listen=True, port=free_port(), auth=f"{AUTH[0]}:{AUTH[1]}",
                         insecure_no_auth=False, share=False, environ={})
    demo, _, _ = serve(settings, cfg, block=False, holder=EngineHolder(settings))
    try:
        yield settings, f"http://127.0.0.1:{cfg.port}"
    finally:
        demo.close()


def wait(http, job_id, until=("done", "failed", "cancelled"), timeout=240):
    t0 = time.monotonic()
    seen = []
    while time.monotonic() - t0 < timeout:
        st = http.get(f"/api/v1/jobs/{job_id}").json()
        seen.append(st)
        if st["state"] in until:
            return st, seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {seen[-1]['state']}")


def test_login_is_required_on_listen(server):
    _, url = server
    with httpx.Client(base_url=url, timeout=30) as http:
        for path in ("/api/v1/presets", "/api/v1/jobs/x", "/api/v1/openapi.json"):
            r = http.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic"), path
        assert http.get("/api/v1/presets", auth=("ann", "wrong")).status_code == 401
        assert http.post("/api/v1/generate", json={"prompt": "x", "method": "none"}).status_code == 401
        # the UI's own login works too (gradio's cookie)
        r = http.post("/login", data={"username": AUTH[0], "password": AUTH[1]})
        assert r.status_code == 200, r.text
        assert http.get("/api/v1/loras").status_code == 200


def test_openapi_schema_is_the_typed_request(server):
    from pipelines.requests import GenerateRequest

    _, url = server
    with httpx.Client(base_url=url, timeout=30, auth=AUTH) as http:
        schema = http.get("/api/v1/openapi.json").json()
    body = schema["components"]["schemas"]["GenerateBody"]
    assert body["required"] == ["prompt"]  # every other field is optional, with its default
    props = body["properties"]
    for name in ("steps", "cfg", "sampler", "negative", "scale", "pose", "restore", "loras", "keep", "count", "speed"):
        assert name in props, name
    assert props["steps"]["default"] == GenerateRequest.model_fields["steps"].default == 30
    assert props["steps"]["maximum"] == 150 and props["cfg"]["default"] == 5.0
    assert "out_dir" not in props and "identity_card" not in props  # no server paths from clients
    assert {"/generate", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/images/{image_id}",
            "/presets", "/poses", "/models", "/loras"} <= set(schema["paths"])


def test_lists(server):
    from pipelines.pose.templates import builtin_names
    from pipelines.presets import list_presets

    _, url = server
    with httpx.Client(base_url=url, timeout=30, auth=AUTH) as http:
        presets = http.get("/api/v1/presets").json()
        poses = http.get("/api/v1/poses").json()
        models = http.get("/api/v1/models").json()
        loras = http.get("/api/v1/loras").json()
    assert [p["name"] for p in presets] == [p.name for p in list_presets()]
    assert {p["name"] for p in poses} >= set(builtin_names())
    assert {m["state"] for m in models} <= {"verified", "present", "missing"}
    assert any(m["name"] == "sdxl-base" for m in models)
    assert loras == []


def test_generate_job_progress_image_by_id_and_bad_input(server):
    from PIL import Image

    from pipelines.metadata import read_recipe

    _, url = server
    with httpx.Client(base_url=url, timeout=60, auth=AUTH) as http:
        r = http.post("/api/v1/generate", json={"prompt": "a portrait", "method": "none", "steps": 3,
                                                "width": 64, "height": 64, "seed": 5, "count": 2})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["state"] in ("queued", "running")
        st, seen = wait(http, job["id"])
        assert st["state"] == "done", st
        assert st["progress"]["steps"] == 3 and st["progress"]["count"] == 2
        steps_seen = {(s["progress"]["image"], s["progress"]["step"]) for s in seen}
        assert len(steps_seen) >= 2  # progress moved while the job ran
        assert [im["seed"] for im in st["images"]] == [5, 6]
        img = st["images"][0]
        assert img["likeness"] is None and img["face_found"] is None  # no identity: not scored
        png = http.get(img["url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        pil = Image.open(io.BytesIO(png.content))
        assert pil.size == (64, 64)
        # image ids are ours; a path is never a valid id
        assert http.get("/api/v1/images/..%2F..%2Fetc%2Fpasswd").status_code == 404
        assert http.get("/api/v1/images/" + "0" * 32).status_code == 404
        # engine validation, one line naming the field
        bad = http.post("/api/v1/generate", json={"prompt": "p", "method": "none", "steps": 500})
        assert bad.status_code == 422 and "steps" in bad.text
        bad = http.post("/api/v1/generate", json={"prompt": "p", "method": "none", "out_dir": "/tmp"})
        assert bad.status_code == 422  # not a field of the HTTP request
        bad = http.post("/api/v1/generate", json={"prompt": "p", "method": "none", "pose": "../../x.json"})
        assert bad.status_code == 400 and "not a file" in bad.json()["detail"]
        bad = http.post("/api/v1/generate", json={"prompt": "p", "method": "faceid",
                                                  "photos": [{"name": "me.gif", "data": base64.b64encode(
                                                      b"GIF89a" + bytes(40)).decode()}]})
        assert bad.status_code == 400 and "photo 'me.gif'" in bad.json()["detail"]
        bad = http.post("/api/v1/generate", json={"prompt": "p", "method": "faceid"})
        assert bad.status_code == 400 and "needs photos" in bad.json()["detail"]
    recipe_png = io.BytesIO(png.content)
    assert read_recipe_bytes(recipe_png, read_recipe)["seed"] == 5


def read_recipe_bytes(buf, read_recipe):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.png"
        p.write_bytes(buf.getvalue())
        return read_recipe(p)


def test_faceid_with_uploaded_photo_reports_likeness(server, photos_dir):
    _, url = server
    data = base64.b64encode((photos_dir / "astronaut.png").read_bytes()).decode()
    with httpx.Client(base_url=url, timeout=60, auth=AUTH) as http:
        r = http.post("/api/v1/generate", json={"prompt": "a portrait", "method": "faceid", "steps": 2,
                                                "width": 64, "height": 64, "seed": 1,
                                                "photos": [{"name": "astronaut.png", "data": data}]})
        assert r.status_code == 202, r.text
        st, _ = wait(http, r.json()["id"])
    assert st["state"] == "done", st
    assert st["images"][0]["face_found"] is not None  # scored against the uploaded face


def test_cancel_stops_a_running_job(server):
    _, url = server
    with httpx.Client(base_url=url, timeout=60, auth=AUTH) as http:
        r = http.post("/api/v1/generate", json={"prompt": "a portrait", "method": "none", "steps": 150,
                                                "width": 64, "height": 64, "count": 4})
        job_id = r.json()["id"]
        wait(http, job_id, until=("running",))
        while http.get(f"/api/v1/jobs/{job_id}").json()["progress"]["step"] < 1:
            time.sleep(0.02)
        assert http.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
        st, _ = wait(http, job_id, timeout=60)
    assert st["state"] == "cancelled" and st["progress"]["step"] < 150, st
    assert st["images"] == []
