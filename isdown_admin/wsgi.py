"""The WSGI application every server runs (gunicorn, runserver via WSGI_APPLICATION).

Wrapped by ``incidents.input_guards.refuse_foreign_charsets``: a request declaring a charset other than UTF-8 is a
clear 400 before Django tries (and fails) to decode it while building the request.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isdown_admin.settings")

from incidents.input_guards import refuse_foreign_charsets

application = refuse_foreign_charsets(get_wsgi_application())
