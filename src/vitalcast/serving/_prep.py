"""Compile a fitted ColumnTransformer into a few numpy operations on one flat vector.

A served row is a float vector ``x`` in the scorer's feature order. Numeric features hold
their value (NaN = missing); categorical features hold the *index of the category* in the
fitted ``OneHotEncoder.categories_`` (NaN = missing, -1 = not a fitted category). From it
the compiled form builds the transformed vector ``z`` exactly as scikit-learn would:

    r[value_out]     = where(isnan(x[value_src]), fill, x[value_src])   SimpleImputer
    r[indicator_out] = isnan(x[indicator_src])                          add_indicator=True
    r[onehot]        = 1 at the fitted position of each category code   OneHotEncoder
    z = (r - mean) / scale                                              StandardScaler

The operations and their order are scikit-learn's own (``X -= mean_; X /= scale_``), so the
results are bit-for-bit the same; positions without a scaler use mean 0 and scale 1, which
leave the value unchanged exactly. Any step outside this list raises :class:`Uncompilable`
and the caller falls back to scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]


class Uncompilable(Exception):
    """A fitted object the compiler does not translate; the message says which and why."""


@dataclass
class CategoricalInput:
    """How one categorical input column maps onto the row vector."""

    name: str
    categories: list[Any]
    codes: dict[Any, int]


@dataclass
class Preprocessor:
    """The fitted ColumnTransformer as flat index and parameter arrays."""

    n_out: int
    value_src: IntArray
    value_out: IntArray
    value_fill: FloatArray
    indicator_src: IntArray
    indicator_out: IntArray
    # one-hot blocks: input column index, first output position, number of fitted
    # categories, and the code a missing value takes: the fitted missing category (last),
    # an imputer's statistic, or -1 (none: all zeros, as for an unknown category).
    onehot_src: IntArray
    onehot_start: IntArray
    onehot_size: IntArray
    onehot_fill_code: FloatArray
    mean: FloatArray
    scale: FloatArray
    categorical: dict[int, CategoricalInput] = field(default_factory=dict)

    def transform_row(self, x: FloatArray) -> FloatArray:
        """Transformed vector of one row (1-D ``x`` in input order)."""
        r = np.zeros(self.n_out)
        v = x[self.value_src]
        r[self.value_out] = np.where(np.isnan(v), self.value_fill, v)
        if self.indicator_src.size:
            r[self.indicator_out] = np.isnan(x[self.indicator_src])
        if self.onehot_src.size:
            self._onehot(x[None, :], r[None, :])
        r -= self.mean
        r /= self.scale
        return r

    def transform_batch(self, x: FloatArray) -> FloatArray:
        """Transformed matrix of many rows (2-D ``x``, one row per sample)."""
        r = np.zeros((x.shape[0], self.n_out))
        v = x[:, self.value_src]
        r[:, self.value_out] = np.where(np.isnan(v), self.value_fill, v)
        if self.indicator_src.size:
            r[:, self.indicator_out] = np.isnan(x[:, self.indicator_src])
        if self.onehot_src.size:
            self._onehot(x, r)
        r -= self.mean
        r /= self.scale
        return r

    def _onehot(self, x: FloatArray, r: FloatArray) -> None:
        codes = x[:, self.onehot_src]
        codes = np.where(np.isnan(codes), self.onehot_fill_code, codes)
        # handle_unknown="ignore": a code outside the fitted categories is all zeros.
        known = (codes >= 0) & (codes < self.onehot_size) & (codes == np.floor(codes))
        rows, cols = np.nonzero(known)
        r[rows, self.onehot_start[cols] + codes[rows, cols].astype(np.intp)] = 1.0


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class _Builder:
    """Accumulates output positions while walking the ColumnTransformer's blocks."""

    def __init__(self) -> None:
        self.n_out = 0
        self.value_src: list[int] = []
        self.value_out: list[int] = []
        self.value_fill: list[float] = []
        self.indicator_src: list[int] = []
        self.indicator_out: list[int] = []
        self.onehot: list[tuple[int, int, int, float]] = []
        self.mean: list[float] = []
        self.scale: list[float] = []
        self.categorical: dict[int, CategoricalInput] = {}

    def numeric_block(self, src: list[int], steps: list[Any], block: str) -> None:
        imputer: SimpleImputer | None = None
        scaler: StandardScaler | None = None
        for step in steps:
            if isinstance(step, SimpleImputer) and imputer is None and scaler is None:
                imputer = step
            elif isinstance(step, StandardScaler) and scaler is None:
                scaler = step
            elif _is_identity(step):
                continue
            else:
                raise Uncompilable(f"{block}: step {type(step).__name__} is not compiled")
        outputs_src: list[int] = list(src)
        fills = [math.nan] * len(src)
        indicator: list[int] = []
        if imputer is not None:
            if not _is_missing(imputer.missing_values):
                raise Uncompilable(f"{block}: SimpleImputer.missing_values must be NaN")
            try:
                stats = np.asarray(imputer.statistics_, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise Uncompilable(f"{block}: non-numeric imputer without an encoder") from exc
            keep = ~np.isnan(stats) if not imputer.keep_empty_features else np.ones_like(stats)
            outputs_src = [s for s, k in zip(src, keep, strict=True) if k]
            fills = [float(v) for v, k in zip(stats, keep, strict=True) if k]
            if imputer.indicator_ is not None:
                indicator = [src[int(i)] for i in imputer.indicator_.features_]
        n_block = len(outputs_src) + len(indicator)
        mean, scale = np.zeros(n_block), np.ones(n_block)
        if scaler is not None:
            if scaler.mean_ is not None and scaler.with_mean:
                mean = np.asarray(scaler.mean_, dtype=np.float64)
            if scaler.scale_ is not None and scaler.with_std:
                scale = np.asarray(scaler.scale_, dtype=np.float64)
            if mean.shape[0] != n_block or scale.shape[0] != n_block:
                raise Uncompilable(f"{block}: StandardScaler width does not match its input")
        start = self.n_out
        for k, (s, fill) in enumerate(zip(outputs_src, fills, strict=True)):
            self.value_src.append(s)
            self.value_out.append(start + k)
            self.value_fill.append(fill)
        for k, s in enumerate(indicator):
            self.indicator_src.append(s)
            self.indicator_out.append(start + len(outputs_src) + k)
        self.mean.extend(mean.tolist())
        self.scale.extend(scale.tolist())
        self.n_out += n_block

    def categorical_block(
        self, src: list[int], steps: list[Any], names: list[str], block: str
    ) -> None:
        imputer: SimpleImputer | None = None
        encoder: OneHotEncoder | None = None
        for step in steps:
            if isinstance(step, SimpleImputer) and imputer is None and encoder is None:
                imputer = step
            elif isinstance(step, OneHotEncoder) and encoder is None:
                encoder = step
            else:
                raise Uncompilable(f"{block}: step {type(step).__name__} is not compiled")
        if encoder is None:
            raise Uncompilable(f"{block}: a categorical block needs a OneHotEncoder")
        if encoder.handle_unknown != "ignore" or encoder.drop_idx_ is not None:
            raise Uncompilable(f"{block}: only OneHotEncoder(handle_unknown='ignore', drop=None)")
        if getattr(encoder, "_infrequent_enabled", False):
            raise Uncompilable(f"{block}: infrequent-category grouping is not compiled")
        # A missing categorical value is served as None (``LoadedModel.frame_of``, as the
        # training frames hold it). SimpleImputer's default ``missing_values=np.nan`` does
        # not match None in an object column, so None reaches the encoder: as a fitted
        # category when training had missing values, else as an unknown one (all zeros).
        # Only an imputer of None itself substitutes its statistic; the default one's
        # statistics never apply, and may themselves be None (the most frequent "value"
        # of a mostly missing column, such as a first stay's previous disposition).
        if imputer is not None and not _is_missing(imputer.missing_values):
            raise Uncompilable(f"{block}: categorical SimpleImputer of a value, not of NaN/None")
        fills = (
            list(imputer.statistics_)
            if imputer is not None and imputer.missing_values is None
            else None
        )
        if fills is not None and any(_is_missing(s) for s in fills):
            raise Uncompilable(f"{block}: categorical SimpleImputer must fill None with a value")
        for j, (s, cats) in enumerate(zip(src, encoder.categories_, strict=True)):
            fitted = list(cats)
            categories = [c for c in fitted if not _is_missing(c)]
            if fitted[: len(categories)] != categories or len(fitted) - len(categories) > 1:
                # scikit-learn sorts None (or NaN) last; anything else is not its layout
                raise Uncompilable(f"{block}: missing values fitted as categories twice")
            codes = {c: i for i, c in enumerate(categories)}
            fill_code = float(len(categories)) if len(fitted) > len(categories) else -1.0
            if fills is not None:
                fill_code = float(codes.get(fills[j], -1))
            if s in self.categorical:
                raise Uncompilable(f"{block}: column {names[s]!r} is one-hot encoded twice")
            self.categorical[s] = CategoricalInput(names[s], categories, codes)
            self.onehot.append((s, self.n_out, len(fitted), fill_code))
            self.mean.extend([0.0] * len(fitted))
            self.scale.extend([1.0] * len(fitted))
            self.n_out += len(fitted)

    def build(self) -> Preprocessor:
        oh = np.asarray(self.onehot, dtype=np.float64).reshape(-1, 4)
        return Preprocessor(
            n_out=self.n_out,
            value_src=np.asarray(self.value_src, dtype=np.intp),
            value_out=np.asarray(self.value_out, dtype=np.intp),
            value_fill=np.asarray(self.value_fill, dtype=np.float64),
            indicator_src=np.asarray(self.indicator_src, dtype=np.intp),
            indicator_out=np.asarray(self.indicator_out, dtype=np.intp),
            onehot_src=oh[:, 0].astype(np.intp),
            onehot_start=oh[:, 1].astype(np.intp),
            onehot_size=oh[:, 2].astype(np.intp),
            onehot_fill_code=oh[:, 3].copy(),
            mean=np.asarray(self.mean, dtype=np.float64),
            scale=np.asarray(self.scale, dtype=np.float64),
            categorical=self.categorical,
        )


def _is_identity(step: Any) -> bool:
    return step == "passthrough" or (
        isinstance(step, FunctionTransformer) and step.func is None and step.validate is False
    )


def _steps(transformer: Any) -> list[Any]:
    if isinstance(transformer, Pipeline):
        return [t for _, t in transformer.steps if t is not None and t != "passthrough"]
    return [transformer]


def compile_column_transformer(ct: ColumnTransformer, feature_names: list[str]) -> Preprocessor:
    """Translate a fitted ColumnTransformer whose input columns are ``feature_names``."""
    names_in = getattr(ct, "feature_names_in_", None)
    if names_in is not None and list(names_in) != list(feature_names):
        raise Uncompilable("the ColumnTransformer was fitted on other column names")
    if ct.n_features_in_ != len(feature_names):
        raise Uncompilable("the ColumnTransformer was fitted on another number of columns")
    builder = _Builder()
    for name, transformer, _columns in ct.transformers_:
        src = list(ct._transformer_to_input_indices.get(name, []))
        if transformer == "drop" or not src:
            continue
        steps = _steps(transformer)
        if any(isinstance(s, OneHotEncoder) for s in steps):
            builder.categorical_block(src, steps, feature_names, f"transformer {name!r}")
        else:
            builder.numeric_block(src, steps, f"transformer {name!r}")
    if builder.n_out == 0:
        raise Uncompilable("the ColumnTransformer produces no columns")
    return builder.build()


def identity_preprocessor(n_features: int) -> Preprocessor:
    """The do-nothing preprocessor for an estimator fitted directly on the feature matrix."""
    builder = _Builder()
    builder.numeric_block(list(range(n_features)), [], "input")
    return builder.build()
