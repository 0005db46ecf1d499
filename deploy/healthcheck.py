"""Container HEALTHCHECK: exit 0 when /healthz answers 200 on the served port, else 1.

``healthcheck.py`` checks the web server (``VITALCAST_PORT``); ``healthcheck.py worker``
checks a stream command's endpoint (``VITALCAST_WORKER_HTTP_PORT``). Kept to the standard
library so it runs in the slim image without curl or wget.
"""

from __future__ import annotations

import os
import sys
import urllib.request

if sys.argv[1:] == ["worker"]:
    port = os.environ.get("VITALCAST_WORKER_HTTP_PORT", "9102")
else:
    port = os.environ.get("VITALCAST_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"healthz failed: {exc}", file=sys.stderr)
    sys.exit(1)
