"""Input and score drift: a recent window compared with the training reference (pure).

The model's sidecar stores one :func:`reference_profile` per feature (and one for the
score) at training time; :func:`compare` checks a recent window against it. No Flask, no
SQLAlchemy: the same code runs in ``vitalcast monitor drift``, a notebook or a batch job.

Statistics reported per feature:

* **PSI** (population stability index) over the reference's decile bins, read with the
  usual bands: < 0.1 stable, 0.1–0.25 moderate shift, ≥ 0.25 major shift
  (Siddiqi, *Credit Risk Scorecards*, 2006; Yurdakul, 2018).
* **Kolmogorov–Smirnov** D on the reference's percentile grid, with its asymptotic p-value.
* **Jensen–Shannon distance** (base 2, in [0, 1]) between the binned distributions.
* **Chi-square** test of homogeneity of the binned (or categorical) counts.
* **Missing-rate change** with a two-proportion z-test: a vital sign that stops being
  recorded shows up here, not in the value distribution.

When a feature is *flagged*: PSI alone is a descriptive index whose value under no
drift shrinks only as ``(bins − 1)·(1/n + 1/m)`` (n reference, m recent values), so on a
small window it crosses 0.1 by chance. A shift is therefore flagged only when it is both
large enough to matter (PSI band, or missing rate changed by at least 10 percentage
points) **and** statistically distinguishable from sampling noise (the matching test's
p-value below ``alpha``). Under no drift each of the two conditions fires with probability
at most ``alpha`` (test validity), so a feature's false-alarm rate is at most
``2·alpha`` (Bonferroni); ``tests/unit/monitoring/test_drift.py`` measures it.

The tests assume independent values on both sides, so both sides hold **one value per
stay**: the window reads each stay at one landmark (:func:`balanced_landmarks`), and the
training reference profiles one row per stay chosen the same way (:func:`reference_rows`),
not the training set's several landmark rows of each stay, which repeat the same patient
(a lab drawn once is in all of them) and would overstate the reference's size and every
test's significance.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray
from scipy import stats
from scipy.spatial.distance import jensenshannon

PROFILE_VERSION = 1

PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
# Missing-rate change bands, in absolute proportion (10 and 25 percentage points).
MISSING_MODERATE = 0.10
MISSING_MAJOR = 0.25
ALPHA = 0.01

# Floor for a bin's fraction inside PSI's logarithm. An empty bin would make PSI infinite;
# 1e-4 (one in ten thousand, below one value of any realistic window) caps one bin's
# contribution at about (1 − 1e-4)·ln(1e4) ≈ 9.2, far above the 0.25 band, so a bin that
# empties or fills completely still reads as a major shift while PSI stays finite and
# comparable across runs.
PSI_EPSILON = 1e-4

N_BINS = 10
MAX_CATEGORIES = 30
OTHER = "__other__"
# A category seen fewer times than this in the training rows is pooled into OTHER, never
# kept by name: a value held by one or two rows (a free-text entry, an identifier that
# slipped into a feature) says who those rows are, and the sidecar is read far more
# widely than the data. Live values of a pooled category fall into OTHER the same way
# (:func:`_categorical_counts`), so the comparison is unchanged in kind.
MIN_CATEGORY_COUNT = 5

Kind = Literal["numeric", "categorical"]
Severity = Literal["none", "moderate", "major"]
_RANK: dict[str, int] = {"none": 0, "moderate": 1, "major": 2}


@dataclass(frozen=True)
class FeatureDrift:
    """The comparison of one feature's recent window with its training reference."""

    kind: Kind
    n_reference: int
    n_recent: int
    missing_rate_reference: float
    missing_rate_recent: float
    missing_pvalue: float
    psi: float | None
    psi_band: Severity
    chi2_pvalue: float | None
    js_distance: float | None
    ks_statistic: float | None
    ks_pvalue: float | None
    severity: Severity
    reasons: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """Whether the shift is both material and beyond sampling noise."""
        return self.severity != "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored with each drift run)."""
        data = asdict(self)
        data["flagged"] = self.flagged
        return data


# --------------------------------------------------------------------------- profiles


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _split(values: Iterable[object]) -> tuple[list[object], int]:
    present: list[object] = []
    missing = 0
    for value in values:
        if _is_missing(value):
            missing += 1
        else:
            present.append(value)
    return present, missing


def reference_profile(
    values: Iterable[object],
    *,
    bins: int = N_BINS,
    max_categories: int = MAX_CATEGORIES,
    min_count: int = MIN_CATEGORY_COUNT,
) -> dict[str, Any]:
    """Summarise a feature's training values into a JSON-serialisable profile.

    Numbers get quantile bin edges with the reference's count in each bin (ties make
    fewer, unequal bins: counts are measured, never assumed to be equal) and the
    empirical CDF on the percentile grid for the KS test; anything else is categorical,
    keeping the ``max_categories`` most frequent values seen at least ``min_count`` times
    and pooling the rest as ``__other__``. Both keep the number of values and the missing
    rate. Only aggregates are stored, never individual values: no category is named that
    fewer than ``min_count`` rows hold.
    """
    present, n_missing = _split(values)
    n = len(present) + n_missing
    base: dict[str, Any] = {
        "version": PROFILE_VERSION,
        "n": n,
        "n_missing": n_missing,
        "missing_rate": n_missing / n if n else 0.0,
    }
    if all(_is_number(v) for v in present):
        arr = np.asarray(present, dtype=float)
        return base | _numeric_profile(arr, bins)
    counts = Counter(str(v) for v in present)
    kept = {v: c for v, c in counts.most_common(max_categories) if c >= min_count}
    other = sum(counts.values()) - sum(kept.values())
    if other:
        kept[OTHER] = kept.get(OTHER, 0) + other
    return base | {"kind": "categorical", "categories": kept}


def _numeric_profile(arr: NDArray[np.float64], bins: int) -> dict[str, Any]:
    if arr.size == 0:
        return {"kind": "numeric", "edges": [], "counts": [0], "cdf_x": [], "cdf": []}
    inner = np.quantile(arr, np.arange(1, bins) / bins)
    edges = np.unique(inner)
    counts = np.bincount(np.searchsorted(edges, arr, side="left"), minlength=edges.size + 1)
    grid = np.unique(np.quantile(arr, np.arange(1, 100) / 100))
    ordered = np.sort(arr)
    cdf = np.searchsorted(ordered, grid, side="right") / arr.size
    return {
        "kind": "numeric",
        "edges": [float(x) for x in edges],
        "counts": [int(c) for c in counts],
        "cdf_x": [float(x) for x in grid],
        "cdf": [float(x) for x in cdf],
        "quantiles": {f"p{q}": float(np.quantile(arr, q / 100)) for q in (5, 25, 50, 75, 95)},
    }


# --------------------------------------------------------------------------- one per stay

StayKey = TypeVar("StayKey", int, str)
Row = TypeVar("Row")


def _spread(key: int | str) -> int:
    """A fixed pseudo-random order of stays (Knuth's multiplicative hash of an integer id,
    CRC-32 of a text id), so which stays fill a landmark's quota does not follow
    admission order."""
    if isinstance(key, int):
        return (key * 2654435761) % 2**32
    return zlib.crc32(key.encode())


def balanced_landmarks(
    reached: Mapping[StayKey, Mapping[int, Row]], n_landmarks: int
) -> dict[StayKey, Row]:
    """One landmark per stay, the same number of stays at every landmark, as many as possible.

    ``reached`` maps each stay to the landmarks (by index) it reached, each with what
    stands for it (a time, a row number). In a live window, stays in progress reach the
    early landmarks more often than the late ones, so letting each stay pick among those
    it reached would over-represent hour 6 and flag every time-dependent input (measured:
    31 inputs of a healthy synthetic ward). The largest equal quota ``k`` is found by
    bisection; each candidate is filled greedily from the landmark the fewest stays
    reached, taking stays in a fixed pseudo-random order.
    """

    def fill(k: int) -> dict[StayKey, Row] | None:
        taken: dict[StayKey, Row] = {}
        counts = {j: sum(j in r for r in reached.values()) for j in range(n_landmarks)}
        for j in sorted(counts, key=lambda j: (counts[j], -j)):
            pool = sorted((e for e, r in reached.items() if j in r and e not in taken), key=_spread)
            if len(pool) < k:
                return None
            taken |= {e: reached[e][j] for e in pool[:k]}
        return taken

    lo, hi = 0, len(reached) // max(n_landmarks, 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fill(mid) is None:
            hi = mid - 1
        else:
            lo = mid
    return fill(lo) or {}


def reference_rows(stay_ids: Sequence[StayKey], landmarks_h: Sequence[float]) -> NDArray[np.bool_]:
    """Which training rows a drift reference profiles: one per stay, equal shares per landmark.

    A training set has one row per stay *per landmark* (6/12/24/48 h); profiling them all
    would count each stay up to four times although its rows are hours apart on the same
    patient (an admission lab is in every one of them), overstating the reference's size
    and so the significance of every test against it. The rows kept are chosen as a
    monitoring window chooses its stays (:func:`balanced_landmarks`, over the landmarks
    present in the training rows), so reference and window are both samples of
    independent stays with the same landmark mix.
    """
    if len(stay_ids) != len(landmarks_h):
        raise ValueError("one landmark per row is needed")
    index = {h: j for j, h in enumerate(sorted(set(landmarks_h)))}
    reached: dict[StayKey, dict[int, int]] = {}
    for row, (stay, hours) in enumerate(zip(stay_ids, landmarks_h, strict=True)):
        reached.setdefault(stay, {})[index[hours]] = row
    keep = np.zeros(len(stay_ids), dtype=bool)
    keep[list(balanced_landmarks(reached, len(index)).values())] = True
    return keep


def _check_profile(profile: Mapping[str, Any]) -> None:
    version = profile.get("version")
    if version != PROFILE_VERSION:
        raise ValueError(
            f"drift reference profile version {version!r} is not {PROFILE_VERSION};"
            " re-create it with vitalcast.monitoring.drift.reference_profile"
        )
    kind = profile.get("kind")
    needed = {"numeric": ("edges", "counts", "cdf_x", "cdf"), "categorical": ("categories",)}
    if kind not in needed:
        raise ValueError(f"drift reference profile has unknown kind {kind!r}")
    absent = [k for k in ("n", "n_missing", *needed[kind]) if k not in profile]
    if absent:
        raise ValueError(f"drift reference profile lacks {', '.join(absent)}")


# --------------------------------------------------------------------------- statistics


def psi(reference: NDArray[np.float64], recent: NDArray[np.float64]) -> float:
    """Population stability index between two vectors of bin fractions.

    ``Σ (q − p)·ln(q / p)``, with each fraction floored at :data:`PSI_EPSILON`.
    """
    p = np.maximum(reference, PSI_EPSILON)
    q = np.maximum(recent, PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_band(value: float | None) -> Severity:
    """The conventional reading of a PSI value."""
    if value is None or value < PSI_MODERATE:
        return "none"
    return "major" if value >= PSI_MAJOR else "moderate"


MIN_EXPECTED = 5.0


def _pool_sparse(table: NDArray[np.float64]) -> NDArray[np.float64]:
    """Merge neighbouring bins until each expects >= 5 recent values (Cochran, 1954).

    The chi-square approximation is anti-conservative when expected counts are small (a
    window of 100 lactate values, half missing, spreads 45 values over 10 bins), which
    would push the false-alarm rate above ``alpha``.
    """
    n_recent = table[1].sum()
    expected = n_recent * table[0] / table[0].sum()
    groups: list[NDArray[np.float64]] = []
    current = np.zeros(2)
    current_expected = 0.0
    for column, exp in zip(table.T, expected, strict=True):
        current = current + column
        current_expected += exp
        if current_expected >= MIN_EXPECTED:
            groups.append(current)
            current = np.zeros(2)
            current_expected = 0.0
    if current.sum() > 0:
        if groups:
            groups[-1] = groups[-1] + current
        else:
            groups.append(current)
    return np.array(groups).T


def homogeneity_pvalue(reference_counts: Iterable[int], recent_counts: Iterable[int]) -> float:
    """Chi-square test that two samples' counts over the same bins share one distribution.

    Sparse bins are pooled first (see :func:`_pool_sparse`), so the test keeps its level.
    """
    table = np.array([list(reference_counts), list(recent_counts)], dtype=float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] >= 2 and table[0].sum() > 0:
        table = _pool_sparse(table)
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    result = stats.chi2_contingency(table, correction=False)
    return float(result.pvalue)


def two_proportion_pvalue(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided pooled z-test that ``k1/n1`` and ``k2/n2`` estimate the same proportion."""
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (k1 / n1 - k2 / n2) / se
    return float(2 * stats.norm.sf(abs(z)))


def ks_on_grid(
    grid: NDArray[np.float64], reference_cdf: NDArray[np.float64], recent: NDArray[np.float64]
) -> float:
    """KS distance between the reference CDF and the recent ECDF, on the reference's grid.

    Exact at the 99 percentile points the profile keeps, hence a lower bound of the
    two-sample D (by at most the 1 % grid spacing for continuous data).
    """
    if grid.size == 0 or recent.size == 0:
        return 0.0
    recent_cdf = np.searchsorted(np.sort(recent), grid, side="right") / recent.size
    return float(np.max(np.abs(reference_cdf - recent_cdf)))


def ks_pvalue(statistic: float, n: int, m: int) -> float:
    """Asymptotic two-sample KS p-value (Stephens' small-sample correction)."""
    if n == 0 or m == 0:
        return 1.0
    en = math.sqrt(n * m / (n + m))
    return float(stats.kstwobign.sf((en + 0.12 + 0.11 / en) * statistic))


# --------------------------------------------------------------------------- comparison


def compare(
    reference: Mapping[str, Any], recent_values: Iterable[object], *, alpha: float = ALPHA
) -> FeatureDrift:
    """Compare a recent window of one feature's values with its training profile.

    Raises:
        ValueError: the profile is not one :func:`reference_profile` wrote.
    """
    _check_profile(reference)
    present, n_missing = _split(recent_values)
    m = len(present) + n_missing
    n_ref = int(reference["n"])
    ref_missing = int(reference["n_missing"])
    ref_rate = ref_missing / n_ref if n_ref else 0.0
    new_rate = n_missing / m if m else 0.0
    miss_p = two_proportion_pvalue(ref_missing, n_ref, n_missing, m)

    if reference["kind"] == "numeric":
        ref_counts, new_counts, ks_d, ks_p = _numeric_counts(reference, present)
    else:
        ref_counts, new_counts = _categorical_counts(reference, present)
        ks_d = ks_p = None

    psi_value = chi2_p = js = None
    if ref_counts.sum() > 0 and new_counts.sum() > 0:
        p = ref_counts / ref_counts.sum()
        q = new_counts / new_counts.sum()
        psi_value = psi(p, q)
        chi2_p = homogeneity_pvalue(ref_counts.tolist(), new_counts.tolist())
        js = float(jensenshannon(p, q, base=2))

    reasons: list[str] = []
    severity: Severity = "none"
    band = psi_band(psi_value)
    if band != "none" and chi2_p is not None and chi2_p < alpha:
        severity = band
        reasons.append(f"distribution shifted: PSI {psi_value:.3f} ({band})")
    change = abs(new_rate - ref_rate)
    if change >= MISSING_MODERATE and miss_p < alpha:
        missing_severity: Severity = "major" if change >= MISSING_MAJOR else "moderate"
        if _RANK[missing_severity] > _RANK[severity]:
            severity = missing_severity
        reasons.append(f"missing rate {ref_rate:.1%} → {new_rate:.1%} ({missing_severity})")

    return FeatureDrift(
        kind=reference["kind"],
        n_reference=n_ref,
        n_recent=m,
        missing_rate_reference=ref_rate,
        missing_rate_recent=new_rate,
        missing_pvalue=miss_p,
        psi=psi_value,
        psi_band=band,
        chi2_pvalue=chi2_p,
        js_distance=js,
        ks_statistic=ks_d,
        ks_pvalue=ks_p,
        severity=severity,
        reasons=reasons,
    )


def _numeric_counts(
    reference: Mapping[str, Any], present: list[object]
) -> tuple[NDArray[np.float64], NDArray[np.float64], float | None, float | None]:
    if not all(_is_number(v) for v in present):
        raise ValueError("recent values of a numeric feature include non-numbers")
    edges = np.asarray(reference["edges"], dtype=float)
    ref_counts = np.asarray(reference["counts"], dtype=float)
    recent = np.asarray(present, dtype=float)
    new_counts = np.bincount(
        np.searchsorted(edges, recent, side="left"), minlength=edges.size + 1
    ).astype(float)
    n_present_ref = int(ref_counts.sum())
    if recent.size == 0 or n_present_ref == 0:
        return ref_counts, new_counts, None, None
    d = ks_on_grid(
        np.asarray(reference["cdf_x"], dtype=float),
        np.asarray(reference["cdf"], dtype=float),
        recent,
    )
    return ref_counts, new_counts, d, ks_pvalue(d, n_present_ref, recent.size)


def _categorical_counts(
    reference: Mapping[str, Any], present: list[object]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    categories: dict[str, int] = dict(reference["categories"])
    # A value the reference does not name (unseen in training, or pooled there as rare)
    # counts as OTHER, as the reference counted its own pooled values.
    labels = list(categories)
    if OTHER not in categories:
        labels.append(OTHER)
    index = {label: i for i, label in enumerate(labels)}
    ref_counts = np.array([categories.get(label, 0) for label in labels], dtype=float)
    new_counts = np.zeros(len(labels), dtype=float)
    for value in present:
        new_counts[index.get(str(value), index[OTHER])] += 1
    return ref_counts, new_counts


def reference_profiles(columns: Mapping[str, Iterable[object]]) -> dict[str, dict[str, Any]]:
    """One profile per column (what the model sidecar stores under ``reference``)."""
    return {name: reference_profile(values) for name, values in columns.items()}


def compare_all(
    profiles: Mapping[str, Mapping[str, Any]],
    recent: Mapping[str, Sequence[object]],
    *,
    alpha: float = ALPHA,
) -> dict[str, FeatureDrift]:
    """Compare every profiled feature; a feature absent from ``recent`` counts as all missing.

    Args:
        profiles: feature name → profile (from the model sidecar).
        recent: feature name → the window's values; its length for absent features is
            taken from the longest present column.
    """
    window = max((len(v) for v in recent.values()), default=0)
    return {
        name: compare(profile, recent.get(name, [None] * window), alpha=alpha)
        for name, profile in profiles.items()
    }


def worst_severity(results: Iterable[FeatureDrift]) -> Severity:
    """The highest severity among ``results``."""
    worst: Severity = "none"
    for result in results:
        if _RANK[result.severity] > _RANK[worst]:
            worst = result.severity
    return worst
