"""Errors jaxrl raises for bad input. Importing this module starts nothing in JAX."""


class ConfigError(ValueError):
    """An impossible or unknown setting, raised before anything compiles."""
