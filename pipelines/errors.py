"""Engine errors. Every error a user can cause is a `LikenessError` with one
sentence naming the file or field; the CLI maps `exit_code` to the process exit
status and the UI maps the message to `gr.Error`."""

from __future__ import annotations

import re

# C0/C1 control characters other than whitespace (which `__str__` folds anyway):
# a file name holding an escape sequence must not drive the user's terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """`text` with control characters written as Python escapes (`\\x1b`)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class LikenessError(Exception):
    """Base class: a failure the user can act on. `exit_code` follows the CLI
    contract: 2 = bad usage or bad input, 1 = an operation failed."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # one line, always, with no raw control characters
        return escape_controls(" ".join(self.message.split()))


class BadInput(LikenessError):
    """The user gave something unusable: a file, a field, a name."""

    exit_code = 2


class UnreadableImage(BadInput):
    pass


class NoFaceFound(BadInput):
    pass


class FaceQualityError(BadInput):
    pass


class UnsafePath(BadInput):
    pass


class ModelError(LikenessError):
    """A model is missing, incomplete, corrupt or incompatible."""


class ModelMissing(ModelError):
    exit_code = 2


class DownloadError(ModelError):
    pass


class LicenseNotAccepted(ModelError):
    exit_code = 2


class Cancelled(LikenessError):
    pass
