"""Model reports from the registry: an HTML model card and a Markdown summary.

Sections follow Mitchell et al. 2019 (model cards) and the TRIPOD+AI items that apply
(Collins et al., BMJ 2024): source of data, outcome, predictors, sample size, missing data,
model building, internal validation, performance with intervals, calibration, subgroups.
Every figure comes from the sidecar written at training time, never typed by hand.
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import Any

from vitalcast.modeling.evaluate import HL_NULL_DRAWS, SUBGROUP_MIN_CLASS
from vitalcast.modeling.tasks import Task, get_task

_ROWS = (
    ("auroc", "AUROC"),
    ("auprc", "AUPRC"),
    ("brier", "Brier score"),
    ("calibration_slope", "Calibration slope"),
    ("calibration_intercept", "Calibration intercept"),
    ("ece", "Expected calibration error"),
    ("hl_h", "Hosmer–Lemeshow H (2012 challenge)"),
    ("event1", "Event 1 = min(Se, PPV)"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("net_benefit", "Net benefit at threshold"),
)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("–" if v is None else str(v))


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, value, 95 % CI) for each headline metric present."""
    out = []
    for key, label in _ROWS:
        if key in metrics:
            ci = metrics.get(f"{key}_ci")
            ci_text = f"{_fmt(ci[0])} – {_fmt(ci[1])}" if ci else ""
            out.append((label, _fmt(metrics[key]), ci_text))
    return out


def h_noise_note(metrics: dict[str, Any]) -> str | None:
    """What the measured H means against sampling noise (see
    :func:`vitalcast.modeling.evaluate.hl_h_if_calibrated`), or None if not computed."""
    null, share = metrics.get("hl_h_calibrated"), metrics.get("hl_h_p")
    if not null or share is None:
        return None
    return (
        f"H from sampling noise alone, had these predictions been exactly calibrated"
        f" (each outcome drawn from its predicted risk, {HL_NULL_DRAWS} draws): median"
        f" {null[0]:.1f},"
        f" 95th percentile {null[1]:.1f}; {share:.1%} of the draws reached the measured"
        f" H of {metrics['hl_h']:.1f}."
    )


def by_landmark(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The per-landmark rows in time order (stored JSON sorts the keys as text: "12"
    before "6")."""
    return sorted(metrics.get("by_landmark", {}).items(), key=lambda kv: float(kv[0]))


def population_sentence(task: Task) -> str | None:
    """Whom the task's model scores, and why, for both forms of the model card: a reader
    of the Markdown report must learn the population as surely as one of the HTML page."""
    if task.population is None:
        return None
    return (
        f"vitalcast scores only {task.population.label}; other encounters are shown"
        f" without a risk, with the reason. {task.population.basis}"
    )


def in_order(groups: dict[str, Any]) -> list[tuple[str, Any]]:
    """Subgroups in reading order: bands by their first number, "<50" before "50-64",
    then named groups alphabetically (stored sidecars sort keys as text, which put "<50"
    after "80+")."""

    def key(label: str) -> tuple[int, float, str]:
        number = re.search(r"\d+(?:\.\d+)?", label)
        if number is None:
            return (2, 0.0, label)
        return (0 if label.startswith("<") else 1, float(number.group()), label)

    return sorted(groups.items(), key=lambda item: key(item[0]))


def _plots(curves: dict[str, Any]) -> str:
    if not curves:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decision = curves.get("decision")  # absent from versions registered before it was kept
    fig, axes = plt.subplots(1, 4 if decision else 3, figsize=(16 if decision else 12, 4))
    roc, pr, cal = curves["roc"], curves["pr"], curves["calibration"]
    axes[0].plot([a for a, _ in roc], [b for _, b in roc])
    axes[0].plot([0, 1], [0, 1], ls=":", c="grey")
    axes[0].set(title="ROC", xlabel="1 − specificity", ylabel="sensitivity")
    axes[1].plot([a for a, _ in pr], [b for _, b in pr])
    axes[1].set(title="Precision–recall", xlabel="recall", ylabel="precision")
    axes[2].plot([c[0] for c in cal], [c[1] for c in cal], marker="o")
    top = max(max(c[0] for c in cal), max(c[1] for c in cal)) * 1.05
    axes[2].plot([0, top], [0, top], ls=":", c="grey")
    axes[2].set(title="Calibration (deciles)", xlabel="predicted", ylabel="observed")
    if decision:
        ts = [d[0] for d in decision]
        model_nb = [d[1] for d in decision]
        axes[3].plot(ts, model_nb, label="model")
        axes[3].plot(ts, [d[2] for d in decision], ls="--", c="grey", label="treat all")
        axes[3].axhline(0, ls=":", c="black", label="treat none")
        # Treat-all falls far below zero at high thresholds; the model's curve is the point.
        axes[3].set_ylim(
            min(-0.02, min(model_nb)) * 1.1, max(model_nb + [d[2] for d in decision]) * 1.1
        )
        axes[3].set(title="Decision curve", xlabel="threshold probability", ylabel="net benefit")
        axes[3].legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table(name: str, header: list[str], rows: list[list[str]]) -> str:
    """A table in a region of its own, named ``name``, that scrolls sideways on a narrow
    screen (WCAG 1.4.10: the page itself does not); focusable so that a keyboard scrolls it."""
    head = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return (
        f'<div class="scroll" role="region" tabindex="0" aria-label="{html.escape(name)}">'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


# Internal validation chooses the candidate, the calibration map and the threshold on the
# same out-of-fold predictions it then reports, so those figures lean optimistic.
APPARENT_NOTE = (
    "Internal validation figures are apparent: the candidate, the calibration map and the"
    " operating threshold were chosen on the same out-of-fold predictions they are computed"
    " from, so they lean optimistic (most at the threshold: Event 1, sensitivity, PPV)."
    " Figures on data the model never saw are the honest estimate."
)


def _recalibrated(model: dict[str, Any]) -> str:
    """Where a recalibrated version's fitted model comes from (``vitalcast recalibrate``):
    its calibration and threshold were refitted on the data below, not its model."""
    return (
        f"Fitted model of {model.get('recalibrated_from')}, unchanged; calibration map and"
        " threshold refitted on local outcomes"
    )


def _of_patients(data: dict[str, Any]) -> str:
    """`` (554 patients)`` when the sidecar records how many patients had the outcome."""
    n = data.get("event_patients")
    return "" if n is None else f" ({n} patients)"


def render_html(sidecar: dict[str, Any], evaluations: list[dict[str, Any]] | None = None) -> str:
    """The model card of one registered version: its internal validation, then every
    stored evaluation on data it never saw (:func:`_performance_html` each), the figures
    a reader should weigh most."""
    task = get_task(sidecar["task"])
    m = sidecar.get("metrics", {})
    model, data = sidecar.get("model", {}), sidecar.get("data", {})
    parts = [
        f"<h1>Model card: {html.escape(sidecar['version'])}</h1>",
        "<h2>Model details</h2>",
        _table(
            "Model details",
            ["item", "value"],
            [
                ["Task", task.name],
                ["Model", f"{model.get('candidate')} ({model.get('family')})"],
                ["Calibration", str(model.get("calibration"))],
                *(
                    [["Recalibrated from", _recalibrated(model)]]
                    if model.get("recalibrated_from")
                    else []
                ),
                ["Operating threshold", _fmt(sidecar.get("threshold"))],
                ["Threshold rule", task.threshold_rule],
                ["Seed", str(model.get("seed"))],
                ["Artifact sha256", sidecar["sha256"]],
                ["Created", sidecar["created_at"]],
                ["Library versions", ", ".join(f"{k} {v}" for k, v in sidecar["versions"].items())],
            ],
        ),
        "<h2>Intended use</h2>",
        f"<p>{html.escape(task.description)} Decision support for clinicians; not a"
        " diagnosis. Out of scope: paediatric patients, populations unlike the training"
        " data (see data), use without clinical review.</p>",
        *([f"<p>{html.escape(scope)}</p>"] if (scope := population_sentence(task)) else []),
        "<h2>Data (TRIPOD+AI 5–9)</h2>",
        _table(
            "Data",
            ["item", "value"],
            [
                [
                    "Source" if not model.get("recalibrated_from") else "Recalibration data",
                    str(data.get("source")),
                ],
                ["Rows (stay × landmark)", str(data.get("rows"))],
                ["Patients", str(data.get("patients"))],
                ["Rows with the outcome", str(data.get("events"))],
                ["Patients with the outcome", str(data.get("event_patients", "not recorded"))],
                ["Landmarks (h)", ", ".join(f"{h:g}" for h in data.get("landmarks_h", []))],
                [
                    "Calibration-only landmarks (h)",
                    ", ".join(f"{h:g}" for h in data.get("calibration_landmarks_h", [])) or "none",
                ],
                ["Predictors", str(len(sidecar["feature_names"]))],
                ["Training-data fingerprint", sidecar["training_data_fingerprint"]],
                ["Notes", "; ".join(data.get("notes", []))],
            ],
        ),
        "<p>Missing values: median imputation with missingness indicators (linear models)"
        " or measurement counts (trees), fitted inside each training fold.</p>",
    ]
    parts += _performance_html(f"Performance: {m.get('validation', '')}", m, named="")
    for ev in evaluations or []:
        title = _evaluation_title(sidecar, ev)
        parts += _performance_html(title, ev, named=f" ({title})")
    parts += [
        "<h2>Model building (TRIPOD+AI 12)</h2>",
        _table(
            "Model building",
            ["candidate", "out-of-fold AUROC (all training landmarks)", "seconds"],
            [
                [s["candidate"], _fmt(s["oof_auroc"]), _fmt(s["seconds"])]
                for s in model.get("search", [])
            ],
        ),
        "<h2>Ethical considerations and caveats</h2>",
        "<p>Check the subgroup tables for unequal performance before use. Explanations are"
        " SHAP values (trees) or coefficient × standardised value (linear), in log-odds.</p>",
        f"<p>{html.escape(APPARENT_NOTE)}</p>",
        *(f"<p>{html.escape(text)}</p>" for text in task.limitations),
    ]
    # A document of its own (also written to a file by `vitalcast report`): its language,
    # title and main landmark; images and tables never wider than a phone's screen.
    style = (
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto;padding:0 8px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
        ".scroll{overflow-x:auto;margin:1em 0}img{max-width:100%;height:auto}</style>"
    )
    title = html.escape(f"Model card: {sidecar['version']}")
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{title} · vitalcast</title>{style}</head><body><main>"
        + "".join(parts)
        + "</main></body></html>"
    )


def _performance_html(title: str, m: dict[str, Any], *, named: str) -> list[str]:
    """One block of figures (the training's internal validation, or a stored evaluation on
    unseen data): metrics with intervals, H's noise note, landmarks, baseline, plots and
    subgroups. ``named`` is appended to each table's name, so that a screen reader tells
    the blocks apart (the training's block keeps the plain names)."""
    parts = [
        f"<h2>{html.escape(title)}</h2>",
        _table(
            "Performance" + named,
            ["metric", "value", "95 % CI"],
            [list(r) for r in metric_rows(m)],
        ),
    ]
    if note := h_noise_note(m):
        parts.append(f"<p>{html.escape(note)}</p>")
    if "by_landmark" in m:
        parts += [
            "<h3>By landmark</h3>",
            # A risk is shown at every hour of a stay, so its calibration at each landmark
            # belongs beside its discrimination there.
            _table(
                "Performance by landmark" + named,
                ["landmark (h)", "n", "AUROC", "Brier", "calibration slope", "intercept"],
                [
                    [
                        h,
                        str(v["n"]),
                        _fmt(v["auroc"]),
                        _fmt(v["brier"]),
                        _fmt(v.get("calibration_slope")),
                        _fmt(v.get("calibration_intercept")),
                    ]
                    for h, v in by_landmark(m)
                ],
            ),
        ]
    if "baseline" in m:
        parts.append(
            f"<p>Baseline {html.escape(m['baseline']['name'])}: AUROC"
            f" {_fmt(m['baseline']['auroc'])} on the same rows.</p>"
        )
    png = _plots(m.get("curves", {}))
    if png:
        shown = "ROC, precision-recall, calibration" + (
            " and decision-curve plots" if m["curves"].get("decision") else " plots"
        )
        parts.append(f'<img alt="{shown}" src="data:image/png;base64,{png}">')
    for col, groups in m.get("subgroups", {}).items():
        parts += [
            f"<h3>Subgroups by {html.escape(col.replace('_', ' '))}</h3>",
            f"<p>Estimates only for groups with at least {SUBGROUP_MIN_CLASS} events and"
            f" {SUBGROUP_MIN_CLASS} non-events; smaller groups by size only.</p>",
            _table(
                f"Subgroups by {col.replace('_', ' ')}{named}",
                ["group", "n", "prevalence", "AUROC", "mean risk", "Se", "PPV"],
                [
                    [
                        g,
                        str(int(v.get("n") or 0)),
                        _fmt(v.get("prevalence")),
                        _fmt(v.get("auroc")),
                        _fmt(v.get("mean_risk")),
                        _fmt(v.get("sensitivity")),
                        _fmt(v.get("ppv")),
                    ]
                    for g, v in in_order(groups)
                ],
            ),
        ]
    return parts


def render_markdown(
    sidecar: dict[str, Any], evaluations: list[dict[str, Any]] | None = None
) -> str:
    """A Markdown summary (for docs/model-report.md): internal validation, then every
    stored evaluation on data the model never saw, each with landmarks, baseline and
    subgroup tables. Every figure is read from the registry."""
    model, data = sidecar.get("model", {}), sidecar.get("data", {})
    lines = [
        f"## {sidecar['task']}: `{sidecar['version']}`",
        "",
        f"Model {model.get('candidate')} ({model.get('family')}), calibration"
        f" {model.get('calibration')}, operating threshold {_fmt(sidecar['threshold'])}"
        f" ({get_task(sidecar['task']).threshold_rule})."
        + (f" {_recalibrated(model)}." if model.get("recalibrated_from") else "")
        + f" {'Calibrated' if model.get('recalibrated_from') else 'Trained'} on"
        f" {data.get('source')}:"
        f" {data.get('rows')} rows of {data.get('patients')} patients, the outcome in"
        f" {data.get('events')} rows{_of_patients(data)};"
        f" {len(sidecar['feature_names'])} predictors. Training"
        f" {_fmt(model.get('train_seconds'))} s. Artifact sha256 `{sidecar['sha256'][:16]}…`.",
        "",
    ]
    if data.get("calibration_only_rows"):
        hours = ", ".join(f"{h:g}" for h in data.get("calibration_landmarks_h", []))
        lines += [
            f"Calibration only (scored out of fold, never trained on):"
            f" {data['calibration_only_rows']} rows at {hours} h.",
            "",
        ]
    if data.get("notes"):
        lines += ["Data notes: " + "; ".join(data["notes"]) + ".", ""]
    task = get_task(sidecar["task"])
    if scope := population_sentence(task):
        lines += [f"Population: {scope}", ""]
    lines += [f"Limitation: {text}" for text in task.limitations]
    lines += ["", APPARENT_NOTE, ""]
    if model.get("search"):
        lines += [
            "Search (fixed budget; out-of-fold AUROC over every training landmark's rows):",
            "",
        ]
        lines += ["| candidate | out-of-fold AUROC | seconds |", "|---|---|---|"]
        lines += [
            f"| {r['candidate']} | {_fmt(r['oof_auroc'])} | {_fmt(r['seconds'])} |"
            for r in model["search"]
        ]
        lines.append("")
    blocks = [
        ("Internal validation: " + str(sidecar["metrics"].get("validation")), sidecar["metrics"])
    ]
    for ev in evaluations or []:
        blocks.append((_evaluation_title(sidecar, ev), ev))
    for title, m in blocks:
        lines += _markdown_block(title, m)
    return "\n".join(lines)


def _evaluation_title(sidecar: dict[str, Any], ev: dict[str, Any]) -> str:
    """A stored evaluation's heading. One on the very data the model was trained on (same
    fingerprint; `evaluate` refuses these now, but a registry may hold one from before)
    is resubstitution and is never called validation on unseen data."""
    where = ev.get("validation") or ev.get("data")
    seen = sidecar.get("training_data_fingerprint")
    if seen is not None and ev.get("data_fingerprint") == seen:
        return f"Resubstitution on the training data, not a validation: {ev.get('data')}"
    return f"Validation on unseen data: {where}"


def _markdown_block(title: str, m: dict[str, Any]) -> list[str]:
    lines = [
        f"### {title}",
        "",
        f"n = {m.get('n')}, events = {m.get('events')}, prevalence {_fmt(m.get('prevalence'))}.",
        "",
        "| metric | value | 95 % CI |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in metric_rows(m)]
    lines.append("")
    if note := h_noise_note(m):
        lines += [note, ""]
    if "baseline" in m:
        b = m["baseline"]
        lines += [
            f"Baseline {b['name']} on the same rows: AUROC {_fmt(b['auroc'])}"
            f" (model {_fmt(m.get('auroc'))}).",
            "",
        ]
    deciles = (m.get("curves") or {}).get("calibration")
    if deciles:
        # The groups H is computed from: where a large H comes from is visible here.
        lines += [
            "Calibration by risk decile (patients sorted by predicted risk):",
            "",
            "| decile | n | mean predicted risk | observed rate | expected | observed |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {i} | {int(n)} | {pred:.4f} | {obs:.4f} | {pred * n:.1f} | {round(obs * n)} |"
            for i, (pred, obs, n) in enumerate(deciles, start=1)
        ]
        lines.append("")
    if m.get("by_landmark"):
        lines += [
            "| landmark (h) | n | AUROC | Brier | calibration slope | calibration intercept |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {h} | {v.get('n')} | {_fmt(v.get('auroc'))} | {_fmt(v.get('brier'))} |"
            f" {_fmt(v.get('calibration_slope'))} | {_fmt(v.get('calibration_intercept'))} |"
            for h, v in by_landmark(m)
        ]
        lines.append("")
    for col, groups in m.get("subgroups", {}).items():
        lines += [
            f"Subgroups by {col.replace('_', ' ')} (estimates only for groups with at least"
            f" {SUBGROUP_MIN_CLASS} events and {SUBGROUP_MIN_CLASS} non-events):",
            "",
            "| group | n | prevalence | AUROC | mean risk | calibration intercept | Se | PPV |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {g} | {int(v.get('n') or 0)} | {_fmt(v.get('prevalence'))} | {_fmt(v.get('auroc'))}"
            f" | {_fmt(v.get('mean_risk'))} | {_fmt(v.get('calibration_intercept'))}"
            f" | {_fmt(v.get('sensitivity'))} | {_fmt(v.get('ppv'))} |"
            for g, v in in_order(groups)
        ]
        lines.append("")
    return lines
