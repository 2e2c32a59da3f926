"""Meta-learning by nested differentiation: meta-gradients, LPG, MAML-RL, RL^2.

Submodules are imported directly (``from jaxrl.meta import metagrad``); this package
imports nothing so that each stays independent.
"""
