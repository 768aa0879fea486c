"""Package list for setuptools (everything else is in pyproject.toml).

The repository keeps s3prl's layout: the project's tasks in ``downstream/`` (``run_downstream.py
-d emotion_ecapa``) and stage 1's entry in ``upstream_ft/`` (``python -m upstream_ft``), both run
from the checkout. Installed, those generic top-level names would collide with other projects, so
the wheel ships ``downstream/`` as ``s3prl_ser/_downstream/`` (where
``s3prl_ser.config.DOWNSTREAM_DIR`` finds it) and ``upstream_ft/`` not at all (installed, stage 1
is ``s3prl-ser finetune``). pyproject.toml cannot combine package discovery with such a mapping,
hence this file.
"""

from setuptools import find_namespace_packages, setup

TASKS_PACKAGE = "s3prl_ser._downstream"

setup(
    packages=[
        *find_namespace_packages(include=["s3prl_ser", "s3prl_ser.*"]),
        TASKS_PACKAGE,
        *(f"{TASKS_PACKAGE}.{name}" for name in find_namespace_packages("downstream")),
    ],
    package_dir={TASKS_PACKAGE: "downstream"},
)
