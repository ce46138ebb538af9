"""HTTP transfer for the model store: resumable downloads into a `.part` file
(Range requests), https only (http just for loopback test servers, never through a
proxy, no redirect to a non-https address), and hub error wording."""

from __future__ import annotations

import http.client
import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm as _tqdm  # a dependency of huggingface_hub

from ..errors import Cancelled, DownloadError
from .catalog import is_allowed_url

HTTP_TIMEOUT = 60
_CHUNK = 1 << 20


class _Transient(Exception):
    """A network failure worth a resumed retry."""


def _hub_error(exc: BaseException) -> str:
    name = type(exc).__name__
    if name in ("OfflineModeIsEnabled",) or "offline" in str(exc).lower():
        return "offline mode is on (HF_HUB_OFFLINE=1); unset it to download"
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return ("the repository was not found or is gated and needs a token: set HF_TOKEN (or run "
                "`huggingface-cli login`) after accepting its terms on the hub")
    if name in ("RemoteEntryNotFoundError", "EntryNotFoundError"):
        return "the file does not exist in the repository"
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), name)
    return f"{name}: {first[:200]}"


class _SilentTqdm(_tqdm):
    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


class _NoDowngradeRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not is_allowed_url(newurl):
            raise DownloadError(f"refusing a redirect from {req.full_url} to a non-https address {newurl}.")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(url: str) -> urllib.request.OpenerDirector:
    handlers: list = [_NoDowngradeRedirect()]
    if urlsplit(url).scheme == "http":  # loopback only (see is_allowed_url): never via a proxy
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def _content_range_total(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) from 'bytes a-b/total' or 'bytes */total'."""
    m = re.match(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _fetch_to_part(url: str, part: Path, size: int | None, desc: str, progress: bool, cancel=None) -> None:
    """Stream `url` into `part`, resuming from its current length with a Range
    request. Raises `_Transient` on a cut-off (the part file is kept for the
    next attempt), `DownloadError` on a definite failure and `Cancelled` when
    `cancel` is set (the part file is kept, so the next run resumes)."""
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size and have > 0:
        return
    headers = {"User-Agent": "likeness-model-store", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = _opener(url).open(urllib.request.Request(url, headers=headers), timeout=HTTP_TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            _, total = _content_range_total(exc.headers.get("Content-Range"))
            if total == have:
                return  # the part is already whole; the hash check decides
            part.unlink(missing_ok=True)
            raise _Transient("the server refused to resume; starting over") from exc
        if exc.code in (408, 429, 500, 502, 503, 504):
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(f"download of {desc} from {url} failed: HTTP {exc.code} {exc.reason}.") from exc
    except DownloadError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Transient(str(getattr(exc, "reason", exc))) from exc
    with resp:
        mode, have = ("ab", have) if resp.status == 206 else ("wb", 0)
        if resp.status == 206 and _content_range_total(resp.headers.get("Content-Range"))[0] != have:
            part.unlink(missing_ok=True)
            raise _Transient("the server answered with a different byte range; starting over")
        length = resp.headers.get("Content-Length")
        body = int(length) if length and length.isdigit() else None
        total = have + body if body is not None else size
        got = 0
        with open(part, mode) as fh, _tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=desc, disable=not progress
        ) as bar:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (http.client.HTTPException, OSError) as exc:
                    raise _Transient(f"connection lost after {have + got} bytes ({exc})") from exc
                if not chunk:
                    break
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"download of {desc} cancelled after {have + got} bytes; run it again to resume.")
                fh.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if body is not None and got != body:
        raise _Transient(f"connection closed after {have + got} of {have + body} bytes")
