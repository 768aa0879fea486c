"""Experiments: launching one run, cross-validation, the deployment run, Table 1 and the main job."""
