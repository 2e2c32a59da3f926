"""Optimisers that optax lacks: K-FAC natural gradients (:mod:`jaxrl.optim.kfac`)."""
