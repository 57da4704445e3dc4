"""`python -m sidecar` is the `apisix-sidecar` command."""

import sys

from .cli import main

sys.exit(main())
