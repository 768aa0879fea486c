"""s3prl-ser: speech emotion recognition on s3prl upstreams (Morais et al., ICASSP 2022).

Importing the package applies the s3prl 0.4.18 compatibility fixes (:mod:`s3prl_ser.compat`),
so ``import s3prl_ser`` before ``import s3prl``.
"""

from s3prl_ser import compat

compat.install()

__version__ = "0.1.0"
