"""Container health check: the SuperLink's (center) or SuperNode's (hospital) /health answers.

FEDCARE_HEALTH_URL: what to ask (default: a SuperNode's local app API); FEDCARE_HEALTH_CA: the
deployment CA for an https URL.
"""

import os
import ssl
import sys
import urllib.request

url = os.environ.get("FEDCARE_HEALTH_URL", "http://127.0.0.1:9094/health")
ca = os.environ.get("FEDCARE_HEALTH_CA")
context = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
try:
    with urllib.request.urlopen(url, timeout=4, context=context):
        pass
except OSError as err:
    print(f"unhealthy: {url}: {err}")
    sys.exit(1)
