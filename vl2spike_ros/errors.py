"""The one exception type for input a user can fix (a path, a file, a value)."""


class InputError(ValueError):
    """Bad input. The message names the input and what was expected; the CLI prints it as one line."""
