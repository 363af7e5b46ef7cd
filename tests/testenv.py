"""The environment the tests run in, set before Django reads its settings (loaded with ``-p tests.testenv``).

The tests run the app in development mode (the sandbox mounted, dev defaults), as ``make run`` does; Django's
test runner then turns ``settings.DEBUG`` off as it always does. Tests of the production settings start
processes of their own with the production environment.
"""

from __future__ import annotations

import os

os.environ.setdefault("DEBUG", "1")
