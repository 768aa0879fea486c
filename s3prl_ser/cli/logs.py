"""The commands' logging: ``-q``/``--quiet`` and ``-v``/``--verbose``, messages on stderr.

Results go to stdout (the commands print them); the library's progress and notes are log
records (``logging.getLogger(__name__)`` under ``s3prl_ser``), written to stderr: INFO as the
plain message, anything else prefixed with its level (``warning: ...``). ``-q`` keeps warnings
and errors only and turns progress bars off; ``-v`` adds debug records, s3prl's and other
libraries' included (e.g. s3prl's Featurizer notes and its ESPnet import warning, which are
quieted otherwise: :mod:`s3prl_ser.s3prl_logging`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys

from tqdm import tqdm

from s3prl_ser.s3prl_logging import ESPNET_LOGGER

__all__ = ["add_verbosity_options", "setup_logging"]


class _Format(logging.Formatter):
    """INFO as the bare message (what the commands printed before), other levels prefixed."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno == logging.INFO else f"{record.levelname.lower()}: {message}"


class _Stderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes (a test's capture, a redirect), like
    :data:`logging.lastResort`, not to the stream of the moment it was set up."""

    @property
    def stream(self):  # noqa: ANN201 (the handler's stream attribute)
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def add_verbosity_options(parser: argparse.ArgumentParser, short_verbose: bool = True) -> None:
    """Add ``-q/--quiet`` and ``-v/--verbose`` (``--verbose`` alone when ``short_verbose`` is
    False: ``run_downstream.py`` keeps s3prl's ``-v`` for the task variant and has its own
    ``--verbose``)."""
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    if short_verbose:
        parser.add_argument("-v", "--verbose", action="store_true", help="debug messages too (s3prl's included)")


def setup_logging(args: argparse.Namespace) -> None:
    """Route log records to stderr at the level ``args.quiet``/``args.verbose`` ask for.

    Idempotent: a second call (a command calling another's ``main``, a test) replaces the
    handler instead of adding one.
    """
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(_Format("%(message)s"))
    root.addHandler(handler)
    # Other libraries (s3prl, torch, transformers) log their INFO chatter; only -v shows it.
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("s3prl_ser").setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logging.getLogger(ESPNET_LOGGER).setLevel(logging.NOTSET if verbose else logging.ERROR)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # worker processes read it when they import tqdm
        # This process imported tqdm already, reading the variable then: its bars' default changes.
        tqdm.__init__ = functools.partialmethod(tqdm.__init__, disable=True)
