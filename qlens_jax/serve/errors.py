"""The errors of `qlens serve` and `qlens search`, one class per kind of failure, and the HTTP
status of each.

The server answers an error by its class (`http_status`), never by reading its message; the
command line reports the `InputError` ones as one line with exit code 2 like any bad input.
"""

from __future__ import annotations

from pathlib import Path

from qlens_jax.errors import InputError, QlensError


class QueryError(InputError):
    """A request or option that cannot be used as given: a malformed number, an empty token (400)."""


class NotFoundError(QueryError):
    """A dictionary, feature or page that this run does not have (404)."""


class UnavailableError(InputError):
    """The run cannot answer this kind of request: a reverse lookup on a run that saved no
    operators, or whose model or dictionaries are gone or changed (409)."""


class RunFileError(InputError):
    """A signature file of the run that cannot be read as it is now: truncated, not Parquet, a
    row count unlike run.json's, or changed while serving (at start-up: exit 2; serving: 503)."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path


class CrossOriginError(QlensError):
    """A costly request without the page's same-origin header, or from another site (403)."""


class BusyError(QlensError):
    """Too many costly requests at once; `retry_after` seconds is a fair wait (429)."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


_STATUS: dict[type[BaseException], int] = {
    BusyError: 429,
    CrossOriginError: 403,
    RunFileError: 503,
    UnavailableError: 409,
    NotFoundError: 404,
    InputError: 400,
}


def http_status(error: BaseException) -> int:
    """The status that answers `error`: that of its most specific class in the table, else 500."""
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500
