#!/usr/bin/env python3
"""s3prl's run_downstream.py with this project's tasks and hub entries; see s3prl_ser/cli/run_downstream.py."""

from s3prl_ser.cli.run_downstream import main

if __name__ == "__main__":
    main()
