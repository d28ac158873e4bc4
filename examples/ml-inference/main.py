"""Iris species from flower measurements.

The model is trained once per instance, when the module is imported, on the iris dataset
that scikit-learn ships (nothing is downloaded at run time); every request only predicts.
"""

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

_IRIS = load_iris()
_MODEL = LogisticRegression(max_iter=1000).fit(_IRIS.data, _IRIS.target)
_USAGE = {
    "error": 'send {"features": [sepal length, sepal width, petal length, petal width]} in cm'
}


def main(req):
    try:
        features = (req.json() or {}).get("features")
    except (ValueError, AttributeError):
        return _USAGE, 400
    if not (
        isinstance(features, list)
        and len(features) == 4
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in features)
    ):
        return _USAGE, 400
    probabilities = _MODEL.predict_proba(np.array([features], dtype=float))[0]
    best = int(probabilities.argmax())
    return {
        "class": str(_IRIS.target_names[best]),
        "probabilities": {
            str(name): round(float(p), 4) for name, p in zip(_IRIS.target_names, probabilities)
        },
    }
