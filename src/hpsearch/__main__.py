"""`python -m hpsearch` is the `hpsearch` command."""

import sys

from hpsearch.cli import main

sys.exit(main())
