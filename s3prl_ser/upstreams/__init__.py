"""s3prl upstream construction: hub entries by name (``build``), several per run (``multi_upstream``),
which upstreams export (``exportable``) and what is registered with s3prl (``registry``)."""
