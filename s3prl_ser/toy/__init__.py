"""The built-in corpus and tiny random-init checkpoints for demos and tests."""
