"""Training: the loop (loop.py), run directories and checkpoints, experiment tracking, DDP."""
