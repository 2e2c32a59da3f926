"""Checkpoints of a batch of runs (orbax-checkpoint) and exact resume."""
