"""Preparation of public emotion corpora in their release layouts, and readers of published folds.

Each preparer module (``ravdess``, ``cremad``, ``emodb``, ``esd``, ``msp_podcast``) exposes
``prepare(root, out, ...) -> Manifest``: it reads the corpus as released, checks every audio
header, writes ``out/manifest.json`` (:mod:`s3prl_ser.data.manifest`) with the corpus's
standard protocol, and raises :class:`~s3prl_ser.data.corpora.common.PreparationError` naming
the offending file. :mod:`.iemocap` writes s3prl's per-session meta data instead (the JSON
SUPERB's runs read), with the same error.
:mod:`.emobox` reads EmoBox's published fold lists as they are; :mod:`.table` turns any CSV or
JSONL with a column mapping into a manifest.
"""

CORPORA = ("iemocap", "msp_podcast", "cremad", "ravdess", "emodb", "esd", "table")
