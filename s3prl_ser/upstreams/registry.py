"""Make this project's downstream tasks and hub entries visible to s3prl.

s3prl's runner imports ``s3prl.downstream.<task>.expert``; appending the project's
``downstream/`` directory to that package's search path makes ``-d emotion_ecapa`` resolve
to ``downstream/emotion_ecapa/expert.py`` while stock tasks (``-d emotion``) still resolve
to s3prl's own. The fine-tuned upstream entries (``hubert_ft_avg``, ``wav2vec2_ft_avg``) are
added to ``s3prl.hub``.
"""

from __future__ import annotations

from pathlib import Path

from s3prl_ser.config import DOWNSTREAM_DIR
from s3prl_ser.finetuning.hub_entries import register_ft_avg_entries

__all__ = ["DOWNSTREAM_DIR", "register", "default_config", "is_project_task"]


def register() -> None:
    """Add ``downstream/`` to ``s3prl.downstream.__path__`` and the ``*_ft_avg`` hub entries (idempotent)."""
    import s3prl.downstream

    if not DOWNSTREAM_DIR.is_dir():
        raise FileNotFoundError(f"the project's downstream directory is missing: {DOWNSTREAM_DIR}")
    if str(DOWNSTREAM_DIR) not in s3prl.downstream.__path__:
        s3prl.downstream.__path__.append(str(DOWNSTREAM_DIR))
    register_ft_avg_entries()


def default_config(task: str) -> Path:
    """``downstream/<task>/config.yaml``, from this project or, for stock tasks, from s3prl.

    The s3prl wheel ships no task configs, so a stock task without one is an error. The
    project's directory is searched whether or not :func:`register` ran yet, so reading a
    task's defaults (e.g. to find a corpus's folds) never depends on what ran before it.
    """
    import s3prl.downstream

    for directory in dict.fromkeys([*map(Path, s3prl.downstream.__path__), DOWNSTREAM_DIR]):
        candidate = directory / task / "config.yaml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no config.yaml for downstream task {task!r} (the s3prl wheel ships none for stock tasks); pass -c CONFIG"
    )


def is_project_task(task: str) -> bool:
    """Whether ``-d task`` runs this project's expert (``downstream/<task>/expert.py``), not s3prl's."""
    return (DOWNSTREAM_DIR / task / "expert.py").is_file()
