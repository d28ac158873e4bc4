"""Each MQTT message is a JSON reading such as {"celsius": 21.5}; the answer, published on the
trigger's response topic, says whether it is too hot. A malformed message is answered 422
(not retried: retrying cannot fix it)."""


def main(req):
    try:
        celsius = float(req.json()["celsius"])
    except (ValueError, TypeError, KeyError):
        return {"error": 'expected {"celsius": number}'}, 422
    return {"celsius": celsius, "too_hot": celsius > 30}
