"""Sensor readings arrive over MQTT, one JSON message per reading:
{"sensor": "kitchen", "celsius": 21.5}. A reading over the threshold answers an alert,
which Gust publishes on the trigger's response topic; a normal one answers 204 No Content,
and nothing is published."""

import os

THRESHOLD = float(os.environ.get("ALERT_ABOVE_CELSIUS", "30"))


def main(req):
    try:
        reading = req.json()
        sensor, celsius = str(reading["sensor"]), float(reading["celsius"])
    except (ValueError, TypeError, KeyError):
        # A malformed reading is answered, not retried: retrying cannot fix it.
        return {"error": "expected {\"sensor\": name, \"celsius\": number}"}, 422
    if celsius <= THRESHOLD:
        return "", 204
    return {"alert": "too hot", "sensor": sensor, "celsius": celsius, "threshold": THRESHOLD}
