"""``python -m shardflow``: the ``shardflow`` command."""

from __future__ import annotations

import sys

from shardflow.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
