"""Runs on the timer's schedule; what it prints is in `gust fn logs`."""

import datetime


def main(req):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"tick at {now}")
    return "done"
