"""Notes: a small CRUD backend over two routes, kept in Redis.

  GET    /notes          every note
  POST   /notes          {"text": "..."} -> 201 and the note
  GET    /notes/{id}     one note
  PUT    /notes/{id}     {"text": "..."} -> the updated note
  DELETE /notes/{id}     204

Instances come and go with the traffic, so the state lives in Redis (REDIS_URL).
"""

import json
import os
import uuid

import redis

_DB = redis.Redis.from_url(
    os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    decode_responses=True,
    socket_timeout=5,
)
_KEY = "notes"


def _text(req):
    try:
        body = req.json()
    except ValueError:
        body = None
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip() or len(text) > 10_000:
        return None
    return text


def main(req):
    note_id = req.params.get("id")
    if note_id is None:
        if req.method == "GET":
            notes = [json.loads(raw) for raw in _DB.hvals(_KEY)]
            return sorted(notes, key=lambda n: n["created"])
        if req.method == "POST":
            text = _text(req)
            if text is None:
                return {"error": 'send {"text": "..."} (1 to 10,000 characters)'}, 400
            note = {"id": uuid.uuid4().hex[:12], "text": text, "created": _DB.incr("notes:clock")}
            _DB.hset(_KEY, note["id"], json.dumps(note))
            return note, 201, {"Location": f"/notes/{note['id']}"}
        return {"error": "use GET or POST on /notes"}, 405
    raw = _DB.hget(_KEY, note_id)
    if raw is None:
        return {"error": f"no note {note_id}"}, 404
    if req.method == "GET":
        return json.loads(raw)
    if req.method == "PUT":
        text = _text(req)
        if text is None:
            return {"error": 'send {"text": "..."} (1 to 10,000 characters)'}, 400
        note = dict(json.loads(raw), text=text)
        _DB.hset(_KEY, note_id, json.dumps(note))
        return note
    if req.method == "DELETE":
        _DB.hdel(_KEY, note_id)
        return "", 204
    return {"error": "use GET, PUT or DELETE on /notes/{id}"}, 405
