"""Audio, datasets, folds, the training sampler and corpus preparation."""
