"""The training core shared by both stages: loop, states, k-best, averaging, config, metrics."""
