"""Container HEALTHCHECK: exit 0 when /healthz answers 200 on the served port, else 1.

``healthcheck.py`` checks the web server (``VITALCAST_PORT``); ``healthcheck.py worker``
checks a stream command's endpoint (``VITALCAST_WORKER_HTTP_PORT``). With
``VITALCAST_TLS_CERTFILE`` and ``VITALCAST_TLS_KEYFILE`` set the web server speaks only
HTTPS, so the check does too. Kept to the standard
library so it runs in the slim image without curl or wget.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request

context = None
if sys.argv[1:] == ["worker"]:
    url = f"http://127.0.0.1:{os.environ.get('VITALCAST_WORKER_HTTP_PORT', '9102')}/healthz"
else:
    url = f"http://127.0.0.1:{os.environ.get('VITALCAST_PORT', '8000')}/healthz"
    if os.environ.get("VITALCAST_TLS_CERTFILE") and os.environ.get("VITALCAST_TLS_KEYFILE"):
        # `vitalcast serve` terminates TLS itself and answers only HTTPS. Its certificate
        # names the public host, not 127.0.0.1, and this checks liveness, not identity.
        url = "https" + url.removeprefix("http")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
try:
    with urllib.request.urlopen(url, timeout=3, context=context) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"healthz failed: {exc}", file=sys.stderr)
    sys.exit(1)
