"""Processes an order in the background. Its downstream (a payment provider, say) fails now
and then: an order marked "flaky" fails on its first attempt and succeeds on the retry that
Gust makes after a backoff."""

import json


def main(req):
    order = req.json() or {}
    attempt = int(req.headers.get("X-Gust-Attempt", "1"))
    if order.get("flaky") and attempt == 1:
        raise ConnectionError("payment provider did not answer")
    print(f"order {order.get('id')} processed on attempt {attempt}")
    return {"order": order.get("id"), "processed": True, "attempt": attempt}
