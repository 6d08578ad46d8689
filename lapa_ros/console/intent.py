"""The intent preview for the page: the policy server's POST /v1/intent on the newest camera image.

The server holds the models (the VLA's latent-action head and the LAQ decoder, lapa/policy/intent.py);
the console only sends the image and the instruction and passes the imagined frames (PNG) to the
page. Available when the server's /v1/metadata announces `intent`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from policy_server import codec

TIMEOUT_S = 10.0


class ServerIntent:
    def __init__(self, http_base_url: str, api_key: str | None = None, timeout_s: float = TIMEOUT_S) -> None:
        self.url = http_base_url.rstrip("/") + "/v1/intent"
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.metadata: dict[str, Any] | None = None  # the server's `intent` metadata once known

    def available(self) -> bool:
        return self.metadata is not None

    def intent(self, image: np.ndarray, instruction: str) -> dict[str, Any]:
        """{"frames_png": [base64 PNG, ...], "latent_tokens": [[int] * L] * T, "model_ms"}; ConnectionError
        when the server cannot answer, ValueError when it refuses the request."""
        body = codec.packb({"image": np.ascontiguousarray(image, np.uint8), "instruction": instruction})
        headers = {"Content-Type": "application/msgpack", "Accept": "application/json"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as e:
            message = e.read().decode("utf-8", "replace")[:500]
            if 400 <= e.code < 500 and e.code != 404:
                raise ValueError(f"the policy server refused the preview ({e.code}): {message}") from None
            raise ConnectionError(f"the policy server answered {e.code}: {message}") from None
        except (OSError, ValueError) as e:
            raise ConnectionError(f"no answer from {self.url}: {e}") from None
        return {"frames_png": reply["frames_png"], "latent_tokens": reply["latent_codes"],
                "model_ms": float(reply["model_ms"])}
