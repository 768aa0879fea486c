"""s3prl-style downstream tasks of s3prl-ser; registered into ``s3prl.downstream`` at run time."""
