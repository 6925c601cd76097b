"""`python -m actors` is the `ollamesh` command."""

import sys

from actors.cli import main

sys.exit(main())
