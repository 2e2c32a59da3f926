"""``python -m jaxrl ...`` is the ``jaxrl`` command."""

import sys

from jaxrl.runner.cli import main

sys.exit(main())
