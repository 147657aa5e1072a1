"""`python -m agentmem.cli` runs the `agentmem` command."""

import sys

from . import main

sys.exit(main())
