"""The feature cache: frozen encoders' outputs computed once, stored and read back.

- :mod:`~s3prl_ser.feature_cache.store`: the on-disk store (shards, index, lock, atomic writes).
- :mod:`~s3prl_ser.feature_cache.speech`: the upstream cache (keys, namespaces, extraction,
  :class:`~s3prl_ser.feature_cache.speech.CachedUpstream` in front of an s3prl upstream).
- :mod:`~s3prl_ser.feature_cache.text`: the same for the frozen text encoder.
- :mod:`~s3prl_ser.feature_cache.attach`: the runner's side (the ``feature_cache`` config
  section, the command-line flags, one cache per stream).
"""
