"""kfac-jax where it imports: ``kfac_jax`` (the module, or ``None``) and :func:`require`.

kfac-jax 0.0.8, the newest release, reads jaxpr internals that jax 0.11 removed or changed
(the ``jax.core`` aliases of ``Var``, ``Effects``, ``new_jaxpr_eqn`` ...; ``ClosedJaxpr``
merged into ``Jaxpr``), so ``import kfac_jax`` fails on jax 0.11. Only ACKTR uses it
(:mod:`jaxrl.optim.kfac`). Importing kfac-jax through this module keeps that failure to
ACKTR: elsewhere ``kfac_jax`` is ``None`` and :func:`require` (called by ACKTR's ``check``
and ``init``) raises a :class:`~jaxrl.errors.ConfigError` that says why. On jax 0.10 it is
kfac-jax itself.
"""

from __future__ import annotations

import jax

from jaxrl.errors import ConfigError

try:
    import kfac_jax
except (AttributeError, ImportError, TypeError) as err:  # jax 0.11: AttributeError
    kfac_jax = None
    IMPORT_ERROR: BaseException | None = err
else:
    IMPORT_ERROR = None


def require():
    """The ``kfac_jax`` module; :class:`ConfigError` if it does not import with this jax."""
    if kfac_jax is None:
        raise ConfigError(
            f"ACKTR needs kfac-jax, which does not import with jax {jax.__version__} "
            f"({type(IMPORT_ERROR).__name__}: {IMPORT_ERROR}). kfac-jax 0.0.8, the newest "
            "release, supports jax <= 0.10: run ACKTR with Python 3.11 and jax 0.10"
        )
    return kfac_jax
