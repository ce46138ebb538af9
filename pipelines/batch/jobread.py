"""Reading a job file, and the files it names, without trusting them; errors
that name the key and the line.

A job file may come from anywhere, so it is bounded before its content is
looked at: a size limit, only regular files (no FIFOs or devices), no YAML
anchors or aliases (a few hundred bytes of nested aliases expand to billions of
nodes), at most `MAX_DEPTH` levels of nesting. JSON is read by the YAML parser
too, so both get line numbers: `JobLines` maps a pydantic error location to a
line through the composed YAML node tree, and `JobErrors` turns a location and
a message into one `BadInput` line ("job file F, line N: items[0].seeds: ...").
Paths in the file are resolved against its folder; URLs are refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import BadInput
from ..imageio import MAX_PHOTO_BYTES, hash_user_file, read_user_file
from .jobspec import MAX_DEPTH, MAX_JOB_BYTES

URL_SCHEMES = ("http://", "https://", "ftp://", "file://", "data:")


# --------------------------------------------------------------- line lookup
class JobLines:
    """Maps a pydantic error location to a line of the job file, through the
    composed YAML node tree (marks survive composition, not construction)."""

    def __init__(self, root):
        self.root = root

    def line(self, loc: tuple) -> int | None:
        import yaml

        node, found = self.root, None
        if node is None:
            return None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                hit = next(((k, v) for k, v in node.value if str(k.value) == str(part)), None)
                if hit is None:
                    break
                found, node = hit[0], hit[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = found = node.value[part]
            else:
                break
        mark = (found if found is not None else node).start_mark
        return mark.line + 1


def dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class JobErrors:
    def __init__(self, path: Path, lines: JobLines):
        self.path, self.lines = path, lines

    def at(self, loc: tuple, message: str) -> BadInput:
        line = self.lines.line(loc)
        where = f"line {line}: " if line else ""
        key = dotted(loc)
        message = message.rstrip(".")
        return BadInput(f"job file {self.path}, {where}{key + ': ' if key else ''}{message}.")

    def from_validation(self, exc: ValidationError, prefix: tuple = ()) -> BadInput:
        err = exc.errors()[0]
        # drop pydantic's union/type tags ("list[str]", "function-after[...]")
        loc = tuple(p for p in err.get("loc", ()) if isinstance(p, int) or "[" not in str(p))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key"
        elif err.get("type") == "missing":
            msg = "required key is missing"
        return self.at(prefix + loc, msg)


def reject_duplicate_keys(root, errors: JobErrors) -> None:
    import yaml

    def walk(node, loc):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for k, v in node.value:
                key = str(k.value)
                if key in seen:
                    raise BadInput(f"job file {errors.path}, line {k.start_mark.line + 1}: "
                                   f"{dotted(loc + (key,))}: key given twice.")
                seen.add(key)
                walk(v, loc + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, loc + (i,))

    walk(root, ())


# -------------------------------------------------------------------- loading
def _check_events(text: str, path: Path) -> None:
    """Refuse anchors, aliases and deep nesting from the YAML event stream: the
    parser is a state machine (linear in the text, no recursion), so this runs
    before anything builds or walks a tree."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise BadInput(f"job file {path}, line {line}: YAML anchors and aliases (& and *) are not "
                           "allowed in job files; write the values out.")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise BadInput(f"job file {path}, line {line}: nested more than {MAX_DEPTH} levels deep.")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _json_depth_ok(data, limit: int) -> bool:
    """Iteratively: is `data` nested at most `limit` levels of dicts/lists?"""
    stack = [(data, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            if d > limit:
                return False
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return True


def parse_job_file(path: Path) -> tuple[Any, JobLines]:
    import yaml

    raw = read_user_file(path, f"job file {path}", max_bytes=MAX_JOB_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"job file {path} is not UTF-8 text.") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"job file {path}, line {exc.lineno}: not valid JSON ({exc.msg}).") from exc
        except RecursionError as exc:
            raise BadInput(f"job file {path}: nested more than {MAX_DEPTH} levels deep.") from exc
        if not _json_depth_ok(data, MAX_DEPTH + 1):
            raise BadInput(f"job file {path}: nested more than {MAX_DEPTH} levels deep.")
        try:
            _check_events(text, path)
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except (yaml.YAMLError, BadInput, RecursionError):  # valid JSON that YAML 1.1 rejects: no line numbers then
            root = None
        return data, JobLines(root)
    try:
        _check_events(text, path)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark else ""
        raise BadInput(f"job file {path}, {line}not valid YAML ({exc.problem or exc.context}).") from exc
    except yaml.YAMLError as exc:
        raise BadInput(f"job file {path} is not valid YAML ({' '.join(str(exc).split())}).") from exc
    except RecursionError as exc:  # bounded by _check_events; kept as the last line of defence
        raise BadInput(f"job file {path}: nested too deeply.") from exc
    except ValueError as exc:  # the YAML resolver's own errors (e.g. a timestamp out of range)
        raise BadInput(f"job file {path} has a value YAML cannot read ({' '.join(str(exc).split())}).") from exc
    return data, JobLines(root)


def local_path(base: Path, value: str, loc: tuple, errors: JobErrors) -> Path:
    """A path named in the job file, resolved against its folder; URLs and NUL
    bytes are refused (photos are read from this machine only)."""
    if "\x00" in value:
        raise errors.at(loc, "the path contains a NUL byte")
    if value.strip().lower().startswith(URL_SCHEMES):
        raise errors.at(loc, f"{value!r} is a URL; download the file and give its local path")
    return (base / value).expanduser()


def contents_hash(files, locs=None, errors: JobErrors | None = None, max_bytes: int = MAX_PHOTO_BYTES) -> str:
    """sha256 over the files' bytes in order. Only regular files within the size
    limit are read; anything else (missing, a FIFO, a device, a folder) is an
    error naming the key, raised before the run starts."""
    h = hashlib.sha256()
    for k, f in enumerate(files):
        try:
            h.update(hash_user_file(f, str(f), max_bytes=max_bytes).encode())
        except BadInput as exc:
            if errors is None or locs is None:
                raise
            raise errors.at(locs[k], str(exc)) from exc
    return h.hexdigest()
