"""The engine: the runner's stages, the training loop, checkpoints, run directories, distributed runs."""
