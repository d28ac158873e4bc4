"""Answers GET with a greeting and POST with the JSON it was sent."""


def main(req):
    if req.method == "POST":
        try:
            sent = req.json()
        except ValueError:
            return {"error": "send a JSON body"}, 400
        return {"received": sent}
    name = req.query.get("name", "world")
    return f"hello, {name}\n"
