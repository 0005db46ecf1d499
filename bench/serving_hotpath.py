"""Serving hot path benchmark: scikit-learn vs the compiled scorer, in process and over HTTP.

Usage (from the repository root; needs Debian's ``wrk``: ``apt-get install wrk``)::

    .venv/bin/python bench/serving_hotpath.py [--duration-s 10] [--write-docs]

1. Trains two representative ICU-style models on synthetic data (60 numeric vitals/labs
   with 20% missing): HistGradientBoosting + sigmoid CalibratedClassifierCV (5 folds,
   ensemble) and LogisticRegression, each behind SimpleImputer(add_indicator)+StandardScaler.
2. In process: single-row latency of ``predict_proba`` on a one-row DataFrame vs
   ``CompiledScorer.score_row`` and the full ``fastpath.handle_predict`` (JSON bytes in and
   out), median and p99.
3. Over HTTP on loopback with wrk (2 threads, 8 connections, bounded duration): the naive
   prototype app, the tuned usual stack and vitalcast's fast path (two server setups).
4. Cost of what ``/api/v1/predict`` adds: one audit INSERT into PostgreSQL per request
   (when reachable) and token checks (keyed hash vs argon2).

Everything runs bounded in count and time and only on 127.0.0.1; child servers are
stopped by their own process group id.
"""

# ruff: noqa: E501  (markdown table rows and their format strings read best on one line)
from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import _results
from vitalcast.serving.fastpath import handle_predict
from vitalcast.serving.scorer import compile_model

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
N_FEATURES = 60
DOCS_SECTION = "## Serving hot path"


# -- data and models ------------------------------------------------------------------------


def make_data(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """ICU-like rows: correlated vitals/labs on different scales, 20% missing, ~14% positive."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 6))
    mixing = rng.normal(size=(6, N_FEATURES))
    x = latent @ mixing + rng.normal(size=(n, N_FEATURES))
    x = x * rng.uniform(1, 30, N_FEATURES) + rng.uniform(0, 150, N_FEATURES)
    logit = -2.2 + latent[:, 0] - 0.7 * latent[:, 1] + 0.4 * latent[:, 2] ** 2
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    x[rng.random(x.shape) < 0.2] = np.nan
    return pd.DataFrame(x, columns=[f"feature_{i:02d}" for i in range(N_FEATURES)]), y


def _prep(features: list[str]) -> ColumnTransformer:
    numeric = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", add_indicator=True)),
            ("scale", StandardScaler()),
        ]
    )
    return ColumnTransformer([("num", numeric, features)], remainder="drop")


def train_models(x: pd.DataFrame, y: np.ndarray) -> dict[str, Any]:
    features = list(x.columns)
    hgb = Pipeline(
        [
            ("prep", _prep(features)),
            (
                "model",
                HistGradientBoostingClassifier(max_iter=150, learning_rate=0.08, random_state=0),
            ),
        ]
    )
    lr = Pipeline([("prep", _prep(features)), ("model", LogisticRegression(max_iter=2000))])
    return {
        "hgb_sigmoid": CalibratedClassifierCV(hgb, method="sigmoid", cv=5).fit(x, y),
        "logistic": lr.fit(x, y),
    }


# -- in-process latency ---------------------------------------------------------------------


def _timed(fn: Any, items: list[Any]) -> list[float]:
    out = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - start)
    return out


def _summary_us(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1e6
    return float(np.median(arr)), float(np.percentile(arr, 99))


def in_process(
    models: dict[str, Any], x_test: pd.DataFrame, n_sklearn: int, n_fast: int
) -> list[dict[str, Any]]:
    rows = []
    features = list(x_test.columns)
    records = [
        {k: (None if np.isnan(v) else v) for k, v in r.items()} for r in x_test.to_dict("records")
    ]
    bodies = [orjson.dumps(r) for r in records]
    for name, model in models.items():
        scorer = compile_model(model, features)
        frames = [x_test.iloc[[i]] for i in range(n_sklearn)]
        arrays = [x_test.to_numpy()[i % len(x_test)] for i in range(n_fast)]
        diff = np.max(
            np.abs(scorer.score_batch(x_test.to_numpy()) - model.predict_proba(x_test)[:, 1])
        )
        _timed(scorer.score_row, arrays[:200])  # warm caches
        sk = _summary_us(_timed(model.predict_proba, frames))
        comp = _summary_us(_timed(scorer.score_row, arrays))
        full = _summary_us(
            _timed(
                lambda b, scorer=scorer: handle_predict(scorer, b),
                [bodies[i % len(bodies)] for i in range(n_fast)],
            )
        )
        rows.append(
            {
                "model": name,
                "compiled": scorer.compiled,
                "max_abs_diff": float(diff),
                "sklearn": sk,
                "compiled_row": comp,
                "fastpath_json": full,
            }
        )
    return rows


# -- HTTP ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(
    port: int, proc: subprocess.Popen[bytes], path: str = "/health", timeout_s: float = 60
) -> None:
    """Poll ``path`` until it answers 200; fail with the server's stderr if it exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {err[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server did not answer {path} within {timeout_s:.0f} s")


_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {}
    for p, val, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        pct[p] = float(val) * _UNIT_S[unit] * 1e3
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50_ms": pct.get("50", float("nan")),
        "p99_ms": pct.get("99", float("nan")),
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def run_wrk(
    url: str, body_file: Path, duration_s: int, headers: tuple[str, ...] = ()
) -> dict[str, float]:
    """wrk (2 threads, 8 connections) POSTing the bodies of ``body_file`` in turn, after a
    2 s warm-up; returns requests/s, p50/p99 ms and error counts."""
    wrk = ["wrk", "-t2", "-c8", "--latency"]
    for header in headers:
        wrk += ["-H", header]
    wrk += ["-s", str(BENCH / "wrk_post_json.lua"), url]
    wenv = {**os.environ, "WRK_BODY_FILE": str(body_file)}
    subprocess.run(
        [*wrk[:1], "-d2s", *wrk[1:]], env=wenv, capture_output=True, check=True, timeout=30
    )
    done = subprocess.run(
        [*wrk[:1], f"-d{duration_s}s", *wrk[1:]],
        env=wenv,
        capture_output=True,
        text=True,
        check=True,
        timeout=duration_s + 30,
    )
    return _parse_wrk(done.stdout)


def run_server(
    cmd: list[str], env: dict[str, str], port: int, body_file: Path, duration_s: int
) -> dict[str, float]:
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=BENCH,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_ready(port, proc)
        return run_wrk(f"http://127.0.0.1:{port}/predict", body_file, duration_s)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def http(model_path: Path, body_file: Path, duration_s: int) -> dict[str, dict[str, float]]:
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    py = sys.executable
    env = {**os.environ, "BENCH_MODEL_PATH": str(model_path), "PYTHONPATH": str(BENCH)}
    # the prototype imports without pinning threads: make sure none are inherited
    naive_env = {k: v for k, v in env.items() if not k.endswith("_NUM_THREADS")}
    results = {}
    setups: list[tuple[str, list[str], dict[str, str]]] = []
    port = _free_port()
    setups.append(
        (
            "naive: Flask dev server, DataFrame + predict_proba",
            [py, "serving_apps.py", str(port)],
            naive_env,
        )
    )
    common = ["--bind", "PLACEHOLDER", "--log-level", "warning"]
    gsetups = [
        (
            "tuned: gunicorn sync x2, 1 OpenMP thread, predict_proba",
            ["-w", "2", "-k", "sync"],
            "serving_apps:create_tuned()",
        ),
        (
            "vitalcast: gunicorn sync x2, compiled + fastpath",
            ["-w", "2", "-k", "sync"],
            "serving_apps:create_vitalcast()",
        ),
        (
            "vitalcast: gunicorn gthread 2x4, compiled + fastpath",
            ["-w", "2", "-k", "gthread", "--threads", "4"],
            "serving_apps:create_vitalcast()",
        ),
    ]
    for label, args, target in gsetups:
        cmd = [gunicorn, *args, *common, target]
        setups.append((label, cmd, env))
    for label, cmd, e in setups:
        if "gunicorn" in cmd[0]:
            port = _free_port()
            cmd = [c if c != "PLACEHOLDER" else f"127.0.0.1:{port}" for c in cmd]
        print(f"  measuring {label} ...", flush=True)
        results[label] = run_server(cmd, e, port, body_file, duration_s)
    return results


# -- what the real endpoint adds --------------------------------------------------------------


def per_request_costs(n: int) -> dict[str, tuple[float, float]]:
    costs: dict[str, tuple[float, float]] = {}
    key, token = os.urandom(32), os.urandom(32).hex()
    tokens = {hmac.new(key, token.encode(), hashlib.sha256).digest(): "user"}
    costs["token check: HMAC-SHA256 + dict lookup"] = _summary_us(
        _timed(
            lambda _: tokens.get(hmac.new(key, token.encode(), hashlib.sha256).digest()), range(n)
        )
    )
    try:
        from argon2 import PasswordHasher

        ph = PasswordHasher()
        digest = ph.hash(token)
        costs["token check: argon2 verify (never per request)"] = _summary_us(
            _timed(lambda _: ph.verify(digest, token), range(5))
        )
    except ImportError:
        pass
    url = os.environ.get(
        "VITALCAST_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute(
                "CREATE TEMP TABLE bench_audit (id bigserial primary key, occurred_at timestamptz"
                " default now(), actor text, action text, subject text, detail jsonb)"
            )
            conn.commit()
            payload = orjson.dumps({"model_version": "v1", "probability": 0.1}).decode()

            def insert_commit(_: int) -> None:
                conn.execute(
                    "INSERT INTO bench_audit (actor, action, subject, detail) VALUES (%s, %s, %s, %s)",
                    ("user", "prediction.created", "-", payload),
                )
                conn.commit()

            costs["audit: one INSERT + COMMIT (PostgreSQL, loopback)"] = _summary_us(
                _timed(insert_commit, range(n))
            )

            def insert_batched(_: int) -> None:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO bench_audit (actor, action, subject, detail) VALUES (%s, %s, %s, %s)",
                        [("user", "prediction.created", "-", payload)] * 100,
                    )
                conn.commit()

            per100 = _timed(insert_batched, range(max(1, n // 100)))
            costs["audit: batched, per row (100 rows per COMMIT)"] = _summary_us(
                [t / 100 for t in per100]
            )
    except Exception as exc:  # bench only: report, do not fail the whole run
        print(f"  (PostgreSQL not measured: {type(exc).__name__}: {exc})")
    return costs


# -- report ----------------------------------------------------------------------------------


def conditions() -> str:
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average at start {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    )


def render(
    lat: list[dict[str, Any]],
    web: dict[str, dict[str, float]],
    costs: dict[str, tuple[float, float]],
    cond: str,
    duration_s: int,
) -> str:
    lines = [
        DOCS_SECTION,
        "",
        f"Measured by `.venv/bin/python bench/serving_hotpath.py --write-docs` ({cond}).",
        "",
    ]
    lines += [
        "### In process, one row",
        "",
        "| model | scikit-learn predict_proba (1-row DataFrame) median / p99 µs | compiled score_row median / p99 µs | fastpath JSON bytes→bytes median / p99 µs | speed-up (median) | max abs diff vs predict_proba |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in lat:
        lines.append(
            f"| {r['model']} | {r['sklearn'][0]:.0f} / {r['sklearn'][1]:.0f} | {r['compiled_row'][0]:.1f} / {r['compiled_row'][1]:.1f} "
            f"| {r['fastpath_json'][0]:.1f} / {r['fastpath_json'][1]:.1f} | {r['sklearn'][0] / r['compiled_row'][0]:.0f}× | {r['max_abs_diff']:.1e} |"
        )
    if not web:
        return "\n".join([*lines, "", "(HTTP not measured in this run)", ""])
    lines += [
        "",
        f"### Over HTTP (wrk, 2 threads, 8 connections, {duration_s} s, loopback, model hgb_sigmoid)",
        "",
        "| server | requests/s | p50 ms | p99 ms | non-2xx |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, r in web.items():
        lines.append(
            f"| {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['non2xx']:.0f} |"
        )
    naive = next(v for k, v in web.items() if k.startswith("naive"))
    tuned = next(v for k, v in web.items() if k.startswith("tuned"))
    best_label, best = max(
        ((k, v) for k, v in web.items() if k.startswith("vitalcast")), key=lambda kv: kv[1]["rps"]
    )
    lines += [
        "",
        f"Best vitalcast setup: {best_label}: **{best['rps'] / naive['rps']:.1f}× the naive app** (target ≥ 10×), "
        f"**{best['rps'] / tuned['rps']:.1f}× the tuned stack** (target ≥ 3×), p99 {best['p99_ms']:.2f} ms (target ≤ 15 ms).",
        "",
    ]
    if costs:
        lines += [
            "### What `/api/v1/predict` adds per request",
            "",
            "| step | median µs | p99 µs |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {k} | {v[0]:.1f} | {v[1]:.1f} |" for k, v in costs.items()]
        lines.append("")
    return "\n".join(lines)


def write_docs(section: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\nFigures measured by the scripts in `bench/`.\n"
    )
    if DOCS_SECTION in text:
        head, _, tail = text.partition(DOCS_SECTION)
        nxt = tail.find("\n## ")
        text = head + section + (tail[nxt:] if nxt != -1 else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=int, default=10)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--save", action="store_true", help="write bench/results/<name>.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    if not args.skip_http and shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (or pass --skip-http)")
    cond = conditions()
    print(f"conditions: {cond}")
    threadpool_limits(limits=1)
    x, y = make_data(12000, seed=1)
    x_test, _ = make_data(2000, seed=2)
    t0 = time.perf_counter()
    models = train_models(x, y)
    print(f"trained {list(models)} in {time.perf_counter() - t0:.0f} s")
    lat = in_process(models, x_test, n_sklearn=300, n_fast=5000)
    for r in lat:
        print(
            f"  {r['model']}: sklearn {r['sklearn'][0]:.0f} us, compiled {r['compiled_row'][0]:.1f} us (p99 {r['compiled_row'][1]:.1f}), "
            f"fastpath json {r['fastpath_json'][0]:.1f} us, max diff {r['max_abs_diff']:.1e}"
        )
    web: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="vitalcast-bench-") as tmp:
        model_path = Path(tmp) / "model.joblib"
        joblib.dump({"model": models["hgb_sigmoid"], "features": list(x.columns)}, model_path)
        body_file = Path(tmp) / "bodies.jsonl"
        recs = [
            {k: (None if np.isnan(v) else round(v, 3)) for k, v in r.items()}
            for r in x_test.head(200).to_dict("records")
        ]
        body_file.write_bytes(b"\n".join(orjson.dumps(r) for r in recs) + b"\n")
        if not args.skip_http:
            web = http(model_path, body_file, args.duration_s)
    costs = per_request_costs(2000)
    section = render(lat, web, costs, cond, args.duration_s)
    print()
    print(section)
    if args.write_docs and web:
        write_docs(section)
        print("wrote docs/benchmarks.md")
    if args.save:
        _results.save("serving_hotpath", figures(lat, web), load_at_start=load_at_start)


def figures(lat: list[dict[str, Any]], web: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The saved record: one-row latencies of the boosted model and the HTTP comparison."""
    hgb = next(r for r in lat if r["model"] == "hgb_sigmoid")
    out: dict[str, Any] = {
        "in_process": {
            "sklearn_median_us": round(hgb["sklearn"][0], 1),
            "compiled_median_us": round(hgb["compiled_row"][0], 1),
            "compiled_p99_us": round(hgb["compiled_row"][1], 1),
            "fastpath_json_median_us": round(hgb["fastpath_json"][0], 1),
            "max_abs_diff": hgb["max_abs_diff"],
        }
    }
    if web:
        naive = next(v for k, v in web.items() if k.startswith("naive"))
        tuned = next(v for k, v in web.items() if k.startswith("tuned"))
        label, best = max(
            ((k, v) for k, v in web.items() if k.startswith("vitalcast")),
            key=lambda kv: kv[1]["rps"],
        )
        pick = ("rps", "p50_ms", "p99_ms", "non2xx")
        out["http"] = {
            "naive": {k: round(naive[k], 2) for k in pick},
            "tuned": {k: round(tuned[k], 2) for k in pick},
            "vitalcast": {k: round(best[k], 2) for k in pick} | {"setup": label},
            "all": {name: {k: round(r[k], 2) for k in pick} for name, r in web.items()},
        }
        out["ratio_naive"] = round(best["rps"] / naive["rps"], 1)
        out["ratio_tuned"] = round(best["rps"] / tuned["rps"], 1)
    return out


if __name__ == "__main__":
    main()
