"""Upstream fine-tuning stage (paper 2.2 and 2.3): ``python -m upstream_ft``.

Per IEMOCAP fold, an s3prl upstream (HuBERT, wav2vec 2.0) is fine-tuned jointly with masked
mean pooling + a linear classifier on the fold's train split, the k best checkpoints by dev
accuracy are averaged, and the result is exported as an s3prl converted checkpoint that
``hubert_local`` / ``wav2vec2_local`` load, or ``hubert_ft_avg -k FT_DIR`` for the fold tested.
``-u text`` does the same for a Hugging Face text encoder (BERT) over the transcripts (paper
3.2). This package is the thin entry to :mod:`s3prl_ser.cli.finetune`; the stage lives in
:mod:`s3prl_ser.finetuning` (its config files are that package's ``config.yaml`` and
``config_builtin.yaml``).
"""

import s3prl_ser  # noqa: F401  (s3prl compatibility fixes must precede any s3prl import)
