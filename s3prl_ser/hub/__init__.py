"""Upstream construction: s3prl hub entries, several upstreams, *_ft_avg entries, fine-tuned exports."""
