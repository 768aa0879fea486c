"""``python -m s3prl_ser.inference MODEL AUDIO|DIR|LIST...``: the thin entry of :mod:`s3prl_ser.cli.inference`."""

import importlib

# The library imports no CLI module; only this entry, when run, loads it.
importlib.import_module("s3prl_ser.cli.inference").main()
