"""The environment the tests run in, set before Django reads its settings (loaded with ``-p tests.testenv``).

The tests run the app in development mode (the sandbox mounted, dev defaults), as ``make run`` does; Django's
test runner then turns ``settings.DEBUG`` off as it always does. Tests of the production settings start
processes of their own with the production environment.
"""

from __future__ import annotations

import os

os.environ.setdefault("DEBUG", "1")

# Tests sign audit checkpoints with a key of their own, made for this run (never a file in the checkout); the
# processes they start (workers) inherit it. tests/conftest.py gives each test a sink file of its own.
if not os.environ.get("AUDIT_SIGNING_KEY") and not os.environ.get("AUDIT_SIGNING_KEY_FILE"):
    from isdown_admin.signing import new_private_pem

    os.environ["AUDIT_SIGNING_KEY"] = new_private_pem()
