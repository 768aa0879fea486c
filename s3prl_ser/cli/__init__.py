"""Command-line programs (python -m s3prl_ser.cli.<name>)."""
