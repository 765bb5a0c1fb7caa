"""`python -m compile`: see compile/cli.py."""

import sys

from .cli import main

sys.exit(main())
