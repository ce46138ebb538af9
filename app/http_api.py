"""A JSON HTTP API for tools that do not speak gradio, mounted on the UI's server
under /api/v1 (its OpenAPI schema: /api/v1/openapi.json, browsable at /api/v1/docs).

    POST /api/v1/generate            GenerateRequest fields as JSON -> {"job": ID}
    GET  /api/v1/jobs/ID             state, progress (step, steps, image, count, ETA), images
    POST /api/v1/jobs/ID/cancel      stops the job within a step
    GET  /api/v1/images/IMAGE_ID     a PNG of a finished job, by the id the job lists
    GET  /api/v1/presets | poses | models | loras

Rules:
- The request body is the engine's typed request (`pipelines.requests.GenerateRequest`)
  less the fields that name server files (photos as paths, identity card, output
  folder): photos come in the body (base64), are decoded by the same safe loader
  as every photo, and live in a private temporary folder for the job only. A pose
  is a template name, never a path. Validation is the engine's own.
- Images are returned by an opaque id the server made; a client never names a path.
- Behind the same login as the UI: with `--auth USER:PASS` every route needs HTTP
  Basic with those credentials, or the UI's own login cookie.
- One job runs at a time on the engine (its lock); others wait in order. Jobs and
  their image ids live in memory for the life of the server (the PNGs stay in outputs/).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict, Field, create_model

from pipelines.errors import BadInput, Cancelled, LikenessError
from pipelines.requests import GenerateRequest, validate_request

if TYPE_CHECKING:
    from .generate_loop import Step

SERVER_ONLY = ("photos", "identity_card", "out_dir", "face_index",
               # the second person's files, and a template or layout, which may name a file on the server
               "photos_2", "identity_card_2", "face_index_2", "template", "layout")
MAX_PHOTO_B64 = 40 * 1024 * 1024  # characters of one base64 photo (about 30 MB of file)
MAX_JOBS_KEPT = 200


class PhotoUpload(BaseModel):
    """One photo in the request body: its file name (for messages) and its bytes, base64."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="photo", min_length=1, max_length=120)
    data: str = Field(min_length=4, max_length=MAX_PHOTO_B64)
    face_index: int | None = Field(default=None, ge=1, le=100, description="1 = the largest face")


def _http_request_model() -> type[BaseModel]:
    """GenerateRequest's fields (same defaults and ranges) with photos in the body."""
    fields: dict[str, Any] = {}
    for name, info in GenerateRequest.model_fields.items():
        if name not in SERVER_ONLY:
            fields[name] = (info.annotation, info)
    fields["photos"] = (list[PhotoUpload], Field(default_factory=list, max_length=10))
    return create_model("GenerateBody", __config__=ConfigDict(extra="forbid"),
                        __doc__="A generation: the engine's request, photos sent inline.", **fields)


GenerateBody = _http_request_model()


class Progress(BaseModel):
    image: int = 0
    count: int = 1
    step: int = 0
    steps: int = 0
    eta_seconds: float | None = None


class ImageInfo(BaseModel):
    id: str
    url: str
    seed: int
    likeness: float | None = Field(default=None, description="mean ArcFace cosine similarity to the photos")
    face_found: bool | None = Field(default=None, description="None when the image was not scored (no identity)")
    width: int
    height: int


class JobStatus(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: Progress
    images: list[ImageInfo] = []
    error: str | None = None


class Job:
    def __init__(self, req: GenerateRequest, tmp: Path):
        self.id = uuid.uuid4().hex
        self.req, self.tmp = req, tmp
        self.state = "queued"
        self.cancel = threading.Event()
        self.progress = Progress(count=req.count)
        self.images: list[ImageInfo] = []
        self.error: str | None = None

    def record(self, step: Step) -> None:
        """Show a step of the running job (an `app.generate_loop.Step`) as its progress."""
        eta = None if step.eta is None else round(step.eta, 1)
        self.progress = Progress(image=step.image_index + 1, count=step.images, step=step.step, steps=step.steps,
                                 eta_seconds=eta)

    def status(self) -> JobStatus:
        return JobStatus(id=self.id, state=self.state, progress=self.progress, images=self.images, error=self.error)


class JobStore:
    """Jobs by id and finished images by id; a single worker thread per job,
    serialised by the engine's lock."""

    def __init__(self, holder):
        self.holder = holder
        self.jobs: dict[str, Job] = {}
        self.images: dict[str, Path] = {}
        self._lock = threading.Lock()

    def submit(self, job: Job) -> None:
        with self._lock:
            self.jobs[job.id] = job
            for old in list(self.jobs)[:-MAX_JOBS_KEPT]:
                if self.jobs[old].state in ("done", "failed", "cancelled"):
                    del self.jobs[old]
        threading.Thread(target=self._run, args=(job,), name=f"http-job-{job.id[:8]}", daemon=True).start()

    def _run(self, job: Job) -> None:
        try:
            if job.cancel.is_set():
                raise Cancelled("cancelled before it started.")
            from .generate_loop import Step, generate_loop

            def running() -> None:
                job.state = "running"

            # the app's one generate loop: in turn with the UI's jobs (the engine lock), cancelled by job.cancel
            for update in generate_loop(self.holder, job.req, job.cancel, on_start=running):
                if isinstance(update, Step):
                    job.record(update)
                elif update.error is not None:
                    raise update.error
                else:
                    result = update.result
            if job.cancel.is_set() and not result.images:
                raise Cancelled("cancelled.")
            for g in result.images:
                image_id = uuid.uuid4().hex
                with self._lock:
                    self.images[image_id] = Path(g.path)
                score = g.recipe.get("likeness") if isinstance(g.recipe, dict) else None
                found = isinstance(score, dict) and bool(score.get("face_found"))
                w, h = g.image.size
                job.images.append(ImageInfo(id=image_id, url=f"/api/v1/images/{image_id}", seed=g.seed,
                                            likeness=float(score["mean"]) if found else None,
                                            face_found=found if isinstance(score, dict) else None,
                                            width=w, height=h))
            job.state = "cancelled" if job.cancel.is_set() and not job.images else "done"
        except Cancelled as exc:
            job.state, job.error = "cancelled", str(exc)
        except LikenessError as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # a bug must not kill the server: reported on the job, one line
            job.state, job.error = "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        finally:
            shutil.rmtree(job.tmp, ignore_errors=True)


def _decode_photos(uploads: list[PhotoUpload], tmp: Path) -> tuple[list[str], dict[str, int]]:
    """Write each upload (checked by the safe photo loader first) into `tmp` under
    a name of ours; returns the paths and their chosen faces."""
    from pipelines.imageio import load_photo
    from pipelines.paths import sanitize_name

    paths, faces = [], {}
    for i, up in enumerate(uploads):
        try:
            data = base64.b64decode(up.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadInput(f"photo {up.name!r}: data is not base64.") from exc
        load_photo(data, name=f"photo {up.name!r}")  # refuses what the engine would refuse, naming the upload
        stem = sanitize_name(Path(up.name).stem, "photo")[:60]
        path = tmp / f"{i:02d}-{stem}{Path(up.name).suffix.lower()[:6] if Path(up.name).suffix else ''}"
        path.write_bytes(data)
        paths.append(str(path))
        if up.face_index is not None:
            faces[str(path)] = up.face_index
    return paths, faces


def to_engine_request(body: BaseModel, tmp: Path) -> GenerateRequest:
    data = body.model_dump(exclude={"photos"}, exclude_unset=True)
    for name in ("pose", "template"):  # names only: a client never names a server file
        value = data.get(name)
        if isinstance(value, str) and ("/" in value or "\\" in value or "." in value):
            raise BadInput(f"{name} {value!r}: give a name (GET /api/v1/poses for poses), not a file.")
    paths, faces = _decode_photos(body.photos, tmp)
    if paths:
        data["photos"] = paths
    if faces:
        data["face_index"] = faces
    return validate_request(GenerateRequest, data, "generate")


# ------------------------------------------------------------------------- lists


def list_presets_data(settings=None) -> list[dict]:
    """The shipped presets, then the user's own (`user`: true)."""
    from pipelines.presets import all_presets, user_presets_dir

    user_dir = user_presets_dir(settings) if settings is not None else None
    return [{"name": p.name, "title": p.title, "description": p.description, "method": p.method,
             "speed": p.speed, "user": mine} for p, mine in all_presets(user_dir)]


def list_poses_data(settings) -> list[dict]:
    from pipelines.pose.templates import builtin_names, list_templates, user_poses_dir

    shipped = set(builtin_names())
    return [{"name": t.name, "title": getattr(t, "title", t.name), "user": t.name not in shipped}
            for t in list_templates(user_poses_dir(settings))]


def list_models_data(settings) -> list[dict]:
    from pipelines.stores import open_store

    store = open_store(settings)
    out = []
    for e in store.catalog:
        st = store.status(e.name)
        out.append({"name": e.name, "kind": e.kind, "license": e.license, "research_only": e.research_only,
                    "state": "verified" if st.verified else ("present" if st.present else "missing")})
    return out


def list_loras_data(settings) -> list[dict]:
    from pipelines.lora.manager import user_lora_names

    return [{"name": n} for n in user_lora_names(settings)]


# ------------------------------------------------------------------------- app


def build_http_api(settings, holder, auth: tuple[str, str] | None = None, parent=None):
    """The FastAPI app to mount at /api/v1. `parent` (the gradio app) lets a
    browser logged in to the UI use the API with its cookie."""
    store = JobStore(holder)
    basic = HTTPBasic(auto_error=False)

    def login(request: Request, creds: HTTPBasicCredentials | None = Depends(basic)) -> None:
        if auth is None:
            return
        if creds is not None and hmac.compare_digest(creds.username.encode(), auth[0].encode()) \
                and hmac.compare_digest(creds.password.encode(), auth[1].encode()):
            return
        cookie_id = getattr(parent, "cookie_id", None)
        tokens = getattr(parent, "tokens", None) or {}
        if cookie_id is not None:
            for key in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
                token = request.cookies.get(key)
                if token and token in tokens:
                    return
        raise HTTPException(401, "log in: HTTP Basic with the server's --auth USER:PASS",
                            headers={"WWW-Authenticate": 'Basic realm="likeness"'})

    # the schema and its page are behind the login too (FastAPI's own routes for them are not)
    api = FastAPI(title="Likeness HTTP API", version="1", dependencies=[Depends(login)],
                  openapi_url=None, docs_url=None, redoc_url=None,
                  description="Generate portraits as jobs; images by id. Same login as the web UI.")
    api.state.jobs = store

    @api.get("/openapi.json", include_in_schema=False)
    def openapi_schema() -> dict:
        return api.openapi()

    @api.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/api/v1/openapi.json", title="Likeness HTTP API")

    def bad(exc: LikenessError):
        return HTTPException(400, str(exc))

    @api.post("/generate", response_model=JobStatus, status_code=202)
    def generate(body: GenerateBody) -> JobStatus:  # type: ignore[valid-type]
        tmp = Path(tempfile.mkdtemp(prefix="likeness-api-"))
        try:
            req = to_engine_request(body, tmp)
        except LikenessError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise bad(exc) from exc
        job = Job(req, tmp)
        store.submit(job)
        return job.status()

    def _job(job_id: str) -> Job:
        job = store.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    @api.get("/jobs/{job_id}", response_model=JobStatus)
    def job_status(job_id: str) -> JobStatus:
        return _job(job_id).status()

    @api.post("/jobs/{job_id}/cancel", response_model=JobStatus)
    def cancel(job_id: str) -> JobStatus:
        job = _job(job_id)
        job.cancel.set()
        return job.status()

    @api.get("/images/{image_id}", response_class=FileResponse,
             responses={200: {"content": {"image/png": {}}}})
    def image(image_id: str):
        path = store.images.get(image_id)
        if path is None or not path.is_file():
            raise HTTPException(404, f"no image {image_id!r}")
        return FileResponse(path, media_type="image/png", filename=path.name)

    @api.get("/presets")
    def presets() -> list[dict]:
        return list_presets_data(settings)

    @api.get("/poses")
    def poses() -> list[dict]:
        try:
            return list_poses_data(settings)
        except LikenessError as exc:
            raise bad(exc) from exc

    @api.get("/models")
    def models() -> list[dict]:
        return list_models_data(settings)

    @api.get("/loras")
    def loras() -> list[dict]:
        return list_loras_data(settings)

    return api


def mount_http_api(app, settings, holder, auth: tuple[str, str] | None) -> None:
    """Mount the API on the running gradio (FastAPI) app at /api/v1."""
    app.mount("/api/v1", build_http_api(settings, holder, auth, parent=app))
