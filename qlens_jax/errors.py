"""The error classes of qlens-jax, under one base.

`QlensError` is the base of every error the project raises on purpose. `InputError` and its
relatives (`LensRequestError`, `DictionaryError`, `converters.ConversionError`, ...) mean bad
input: a command reports them as one line and exit code 2. `SelfCheckError` means the numbers
cannot be trusted (exit code 1).
"""


class QlensError(Exception):
    """Base of every error raised on purpose by qlens-jax and its converters."""


class InputError(QlensError, ValueError):
    """An input or option that cannot be used as given; the message names it."""


class SelfCheckError(QlensError, RuntimeError):
    """The dense path disagrees with the per-feature path: the numbers cannot be trusted."""


class NonFiniteScoreError(InputError):
    """A readout gave a NaN or infinite score: its inputs overflow float32. The message names
    the dictionary, the feature and the lens."""
