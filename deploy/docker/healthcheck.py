"""The images' HEALTHCHECK: GET ``$AUTOAI_HEALTHCHECK_URL`` (or the URL given as the argument);
exit 0 on a 2xx answer, 1 otherwise, with one line saying why.

Standard library only, so that the image needs no curl. Each target sets the variable: the
control plane ``http://127.0.0.1:8080/healthz``, eas-server ``http://127.0.0.1:8000/v2/health/ready``
(503 while loading or draining). Set it anew when you run either on another port.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0  # under the HEALTHCHECK --timeout of 5 s, so the reason gets printed


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("AUTOAI_HEALTHCHECK_URL", "")
    if not url.startswith(("http://", "https://")):
        print(f"unhealthy: no http(s) URL to check (got {url!r})")
        return 1
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
            status = int(answer.status)
    except urllib.error.HTTPError as exc:  # a non-2xx answer
        status = exc.code
        exc.close()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"unhealthy: {url}: {reason}")
        return 1
    if 200 <= status < 300:
        print(f"healthy: {url}: {status}")
        return 0
    print(f"unhealthy: {url}: {status}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
