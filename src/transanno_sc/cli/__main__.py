"""``python -m transanno_sc.cli``: the ``transanno`` command."""

import sys

from transanno_sc.cli import main

sys.exit(main())
