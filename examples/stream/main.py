"""Aggregates a window of page-view events: each NATS JetStream message carries a list of
events ({"page": "/home", "ms": 120}), and the answer, published to the results subject,
has per page the views and the mean and slowest load time."""


def main(req):
    events = req.json()
    if not isinstance(events, list):
        return {"error": "expected a JSON list of {\"page\", \"ms\"} events"}, 422
    pages = {}
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("page"), str):
            continue
        ms = event.get("ms")
        stats = pages.setdefault(event["page"], {"views": 0, "total_ms": 0, "slowest_ms": 0})
        stats["views"] += 1
        if isinstance(ms, (int, float)) and not isinstance(ms, bool):
            stats["total_ms"] += ms
            stats["slowest_ms"] = max(stats["slowest_ms"], ms)
    return {
        "events": len(events),
        "pages": {
            page: {
                "views": s["views"],
                "mean_ms": round(s["total_ms"] / s["views"], 1),
                "slowest_ms": s["slowest_ms"],
            }
            for page, s in sorted(pages.items())
        },
    }
