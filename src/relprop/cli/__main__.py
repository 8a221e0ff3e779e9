"""``python -m relprop.cli``: the ``relprop`` command."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
