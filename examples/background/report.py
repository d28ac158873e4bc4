"""The nightly report: run by a timer. Each tick is an asynchronous invocation, retried like
any other, with X-Gust-Timer naming the timer."""

import datetime


def main(req):
    timer = req.headers.get("X-Gust-Timer", "manual")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"report for {now} (tick of {timer})")
    return {"report": "nightly", "at": now, "timer": timer}
