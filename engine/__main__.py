"""``python -m ccproxy_engine``: the same as the ``ccproxy-engine`` command."""

import sys

from ._cli import main

sys.exit(main())
