"""A least-squares line fitted with numpy when the module loads (once per instance), then
used for every request: POST {"x": [1, 2, 3]} answers the predicted y for each x."""

import numpy as np

# Training data: y = 2x + 1 with a little noise. A real model would be loaded from a file
# in this directory (np.load, joblib.load, ...).
_rng = np.random.default_rng(7)
_x = np.linspace(0, 10, 50)
_y = 2 * _x + 1 + _rng.normal(0, 0.1, _x.size)
SLOPE, INTERCEPT = np.polyfit(_x, _y, 1)


def main(req):
    try:
        xs = np.asarray(req.json()["x"], dtype=float)
    except (ValueError, TypeError, KeyError):
        return {"error": 'send {"x": [numbers]}'}, 422
    return {"y": [round(float(v), 3) for v in SLOPE * xs + INTERCEPT]}
