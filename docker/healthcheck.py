"""Container health check: the SuperLink's (center) or `fedcare client`'s (hospital) /health answers 200.

The hospital's answers 200 only while its SuperNode runs and reaches the SuperLink (fedcare/link_health.py).
FEDCARE_HEALTH_URL: what to ask (default: `fedcare client --health-port 9095`); FEDCARE_HEALTH_CA: the
deployment CA for an https URL.
"""

import os
import ssl
import sys
import urllib.error
import urllib.request

url = os.environ.get("FEDCARE_HEALTH_URL", "http://127.0.0.1:9095/health")
ca = os.environ.get("FEDCARE_HEALTH_CA")
context = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
try:
    with urllib.request.urlopen(url, timeout=4, context=context):
        pass
except OSError as err:  # an HTTPError's body says why (e.g. the SuperLink is unreachable)
    body = err.read().decode(errors="replace").strip() if isinstance(err, urllib.error.HTTPError) else ""
    print(f"unhealthy: {url}: {err}" + (f": {body}" if body else ""))
    sys.exit(1)
