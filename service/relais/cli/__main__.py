"""``python -m relais.cli``: the same as the ``relais`` script."""

import sys

from relais.cli import main

sys.exit(main())
