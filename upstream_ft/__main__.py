"""``python -m upstream_ft``: stage 1's command line, :mod:`s3prl_ser.cli.finetune`."""

from s3prl_ser.cli.finetune import main

if __name__ == "__main__":
    main()
