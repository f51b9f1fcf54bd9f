"""``python -m attnarena.cli``: the same as the ``attnarena`` command."""
import sys

from attnarena.cli import main

sys.exit(main())
