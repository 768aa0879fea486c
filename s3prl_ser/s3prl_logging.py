"""s3prl's own notes as log records, so that a command's ``-q``/``-v`` governs them.

Two kinds of s3prl output reach every command only because the project imports s3prl:

* importing ``s3prl.hub`` imports every upstream, and espnet_hubert's warns "ESPnet is not
  installed, cannot use espnet_hubert upstream" (logger :data:`ESPNET_LOGGER`). No command uses
  that upstream unless asked, and then s3prl stops with the same reason, so the warning is
  quieted at ``import s3prl_ser`` (:func:`quiet_import_warnings`); a command's ``-v`` shows it.
* s3prl's ``Featurizer`` (and its upstream hooks) print notes to stderr when built ("Take a list
  of 13 features and weighted sum them", the downsample rate) through
  ``s3prl.utility.helper.show``; :func:`log_featurizer_notes` turns them into records of
  :data:`NOTES_LOGGER`: DEBUG, or WARNING for the notes s3prl calls a warning or an error.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["ESPNET_LOGGER", "NOTES_LOGGER", "quiet_import_warnings", "log_featurizer_notes"]

ESPNET_LOGGER = "s3prl.upstream.espnet_hubert.expert"
NOTES_LOGGER = "s3prl.upstream.interfaces"


def quiet_import_warnings() -> None:
    """Keep espnet_hubert's import-time warning out of the log (errors still pass); no s3prl import."""
    logging.getLogger(ESPNET_LOGGER).setLevel(logging.ERROR)


def log_featurizer_notes() -> None:
    """Make ``s3prl.upstream.interfaces`` log its notes instead of printing them (idempotent).

    Imports ``s3prl.upstream.interfaces``; call it where the project is about to use s3prl's
    ``Featurizer``.
    """
    from s3prl.upstream import interfaces

    interfaces.show = _show_as_log


def _show_as_log(*args: Any, **_: Any) -> None:
    """``s3prl.utility.helper.show`` (print on the leader process only) as a log record."""
    from s3prl.utility.helper import is_leader_process

    if not is_leader_process():
        return
    message = " ".join(map(str, args))
    level = logging.WARNING if "Warning:" in message or "Error:" in message else logging.DEBUG
    logging.getLogger(NOTES_LOGGER).log(level, message)
