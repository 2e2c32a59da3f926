"""Tools for studying trained agents: :mod:`jaxrl.analysis.critical_states` generates the
states an agent finds extreme (Rupprecht et al. 2020)."""
