"""Schema-validated JSON data files (presets, pose templates): one place that turns
parse and validation failures into a `BadInput` naming the file and the key."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .errors import BadInput

M = TypeVar("M", bound=BaseModel)


def parse_json_model(text: str | bytes, model: type[M], source: str, what: str, keys_hint: str,
                     describe: Callable[[ErrorDetails], str]) -> M:
    """Parse `text` as a JSON object and validate it as `model`.

    `what` names the kind of file ("a preset"), `keys_hint` lists its keys for the
    not-an-object message, `describe` words the first validation error."""
    try:
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise BadInput(f"{source} is not UTF-8 text; {what} is a JSON file.") from exc
    except json.JSONDecodeError as exc:
        raise BadInput(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.") from exc
    if not isinstance(data, dict):
        raise BadInput(f"{source} must hold a JSON object ({keys_hint}).")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadInput(f"{source}: {describe(exc.errors()[0])}.") from exc
