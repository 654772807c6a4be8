"""Generation, downstream of the model: the diffusion sampler, bond perception and valence tables, the
baselines, the valence guard, molecule files and `atomfm generate` (docs/generation.md). Neither ``model/``
nor ``train/`` imports it; the metrics are ``eval/tasks/generation.py``."""
