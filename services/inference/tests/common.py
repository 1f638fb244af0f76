"""What openai_api.py and ollama_api.py share: the service's /metrics, and waiting."""

import os
import time
import urllib.request

URL = os.environ["LLAMABOX_URL"]


def metric(name, url=URL):
    with urllib.request.urlopen(url + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith("llamabox_inference_" + name + " "):
                return float(line.split()[1])
    raise AssertionError(f"/metrics has no {name}")


def wait_until(condition, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
