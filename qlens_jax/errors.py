"""The error a command reports as one line and exit code 2 (bad input, not a bug)."""


class InputError(ValueError):
    """An input or option that cannot be used as given; the message names it."""
