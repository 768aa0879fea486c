"""``python -m s3prl_ser.export RUN -o MODEL_DIR``: the thin entry of :mod:`s3prl_ser.cli.export`.

Library use: :func:`s3prl_ser.inference.export.export_run`.
"""

if __name__ == "__main__":
    import importlib  # the library imports no CLI module; only this entry, when run, loads it

    importlib.import_module("s3prl_ser.cli.export").main()
