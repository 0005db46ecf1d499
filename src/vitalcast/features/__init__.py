"""Point-in-time features: one code path for training and serving (pure; see README.md)."""

from __future__ import annotations

from vitalcast.features.batch import build_feature_frame
from vitalcast.features.labels import describe_feature, feature_label
from vitalcast.features.stay import (
    DESCRIPTOR_FEATURES,
    FEATURE_NAMES,
    TIME_SERIES_VARIABLES,
    WINDOWS,
    ObservationTuple,
    StayInput,
    feature_names,
    stay_features,
)

__all__ = [
    "DESCRIPTOR_FEATURES",
    "FEATURE_NAMES",
    "TIME_SERIES_VARIABLES",
    "WINDOWS",
    "ObservationTuple",
    "StayInput",
    "build_feature_frame",
    "describe_feature",
    "feature_label",
    "feature_names",
    "stay_features",
]
