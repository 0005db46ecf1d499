"""The three HTTP apps compared by serving_hotpath.py (bench-only; not vitalcast's API).

* ``naive``: the prototype: Flask, a one-row DataFrame and ``predict_proba`` per request,
  ``jsonify``; run by ``app.run()`` (Werkzeug's threaded dev server), threads not pinned.
* ``tuned``: the best usual stack measured in issue 5: the same view under gunicorn
  (sync, 2 workers) with OpenMP/BLAS pinned to one thread per worker.
* ``vitalcast``: the compiled scorer behind ``vitalcast.serving.fastpath.handle_predict``.

The model is loaded once per process from ``BENCH_MODEL_PATH`` (a joblib file written by
the bench itself).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import joblib
import pandas as pd
from flask import Flask, Response, jsonify, request

from vitalcast.serving.fastpath import handle_predict
from vitalcast.serving.scorer import compile_model
from vitalcast.serving.threads import limit_native_threads


def _load() -> tuple[Any, list[str]]:
    bundle = joblib.load(os.environ["BENCH_MODEL_PATH"])
    return bundle["model"], bundle["features"]


def _health(app: Flask) -> None:
    app.add_url_rule("/health", "health", lambda: "ok")


def _dataframe_app() -> Flask:
    model, features = _load()
    app = Flask("bench_dataframe")
    _health(app)

    @app.post("/predict")
    def predict() -> Any:
        frame = pd.DataFrame([request.get_json()], columns=features)
        return jsonify({"probability": float(model.predict_proba(frame)[0, 1])})

    return app


def create_naive() -> Flask:
    return _dataframe_app()


def create_tuned() -> Flask:
    limit_native_threads(1)
    return _dataframe_app()


def create_vitalcast() -> Flask:
    limit_native_threads(1)
    model, features = _load()
    scorer = compile_model(model, features)
    if not scorer.compiled:
        raise SystemExit(f"bench model did not compile: {scorer.fallback_reason}")
    app = Flask("bench_vitalcast")
    _health(app)

    @app.post("/predict")
    def predict() -> Response:
        status, body = handle_predict(scorer, request.get_data(cache=False))
        return Response(body, status=status, mimetype="application/json")

    return app


if __name__ == "__main__":  # the prototype's way of serving: python serving_apps.py PORT
    create_naive().run(host="127.0.0.1", port=int(sys.argv[1]))
