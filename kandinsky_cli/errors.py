"""Errors that the CLI reports as one clear line with exit code 2."""
from contextlib import contextmanager
from typing import Iterator, Optional


class UserError(Exception):
    """Bad input from the user (a value, a file, a model folder): one line, exit code 2."""


class ModelError(UserError, ValueError):
    """A malformed or unsupported model folder (a config, weights or tokenizer file): the message names the
    file, and the key or tensor where there is one. Also a ValueError, which the networks' config checks
    raised before there was a ModelError."""


class InputError(UserError):
    """Bad input attributed to a request key (``mask``, ``mask_rects[2]``, ``out``): the command line shows the
    message, a batch file ``FILE: jobs[i].KEY: message``."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@contextmanager
def about(key: Optional[str]) -> Iterator[None]:
    """Attribute a UserError raised inside to ``key`` (its ``key`` attribute; errors that already name their key or
    keys pass unchanged)."""
    try:
        yield
    except UserError as e:
        if key is not None and getattr(e, "key", None) is None and not hasattr(e, "in_file"):
            e.key = key      # the error keeps its class (e.g. an image over the size policy)
        raise
