"""s3prl-ser: speech emotion recognition on s3prl upstreams (Morais et al., ICASSP 2022).

Importing the package applies the s3prl 0.4.18 compatibility fixes (:mod:`s3prl_ser.compat`),
so ``import s3prl_ser`` before ``import s3prl``; it also quiets s3prl's import-time warning
about ESPnet (:mod:`s3prl_ser.s3prl_logging`).
"""

from s3prl_ser import compat, s3prl_logging

compat.install()
s3prl_logging.quiet_import_warnings()

__version__ = "0.1.0"
