"""Container HEALTHCHECK: exit 0 when /healthz answers 200 on the served port, else 1.

Kept to the standard library so it runs in the slim image without curl or wget.
"""

from __future__ import annotations

import os
import sys
import urllib.request

port = os.environ.get("VITALCAST_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"healthz failed: {exc}", file=sys.stderr)
    sys.exit(1)
