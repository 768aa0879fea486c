"""The one way the command-line programs end on an expected error: ``error: ...``, status 1."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from s3prl_ser.config import ConfigError
from s3prl_ser.feature_cache.speech import CacheSpaceError

__all__ = ["EXPECTED_ERRORS", "exit_on_error"]

# What a user fixes (a config typo, a missing file, a bad value, a full disk for the feature
# cache); ConfigError is a ValueError, named for the reader.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, ValueError, CacheSpaceError)


@contextmanager
def exit_on_error(*errors: type[BaseException]) -> Iterator[None]:
    """Turn the expected errors raised inside into ``sys.exit("error: <message>")``.

    An expected error ends the command with its message on stderr instead of a traceback; any
    other exception is a bug and keeps its traceback. Works as a ``with`` block or a decorator.

    Args:
        *errors: the exception classes to turn into an exit (default :data:`EXPECTED_ERRORS`).

    Example:
        >>> with exit_on_error():
        ...     raise ConfigError("unknown config key config.runner.total_step")
        Traceback (most recent call last):
        ...
        SystemExit: error: unknown config key config.runner.total_step
        >>> @exit_on_error(OSError)
        ... def read(path):
        ...     return open(path).read()
        >>> read("/nonexistent/config.yaml")
        Traceback (most recent call last):
        ...
        SystemExit: error: [Errno 2] No such file or directory: '/nonexistent/config.yaml'
    """
    expected = errors or EXPECTED_ERRORS
    try:
        yield
    except expected as error:
        sys.exit(f"error: {error}")
