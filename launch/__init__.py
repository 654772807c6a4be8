"""The `atomfm` command line and the launchers (torchrun, deepspeed, SLURM templates)."""
