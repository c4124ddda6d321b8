"""Errors that the CLI reports as one clear line with exit code 2."""


class UserError(Exception):
    """Bad input from the user (a value, a file, a model folder): one line, exit code 2."""
