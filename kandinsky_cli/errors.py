"""Errors that the CLI reports as one clear line with exit code 2."""


class UserError(Exception):
    """Bad input from the user (a value, a file, a model folder): one line, exit code 2."""


class ModelError(UserError, ValueError):
    """A malformed or unsupported model folder (a config, weights or tokenizer file): the message names the
    file, and the key or tensor where there is one. Also a ValueError, which the networks' config checks
    raised before there was a ModelError."""
