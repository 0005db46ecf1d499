"""Synthetic adult ICU stays in the PhysioNet 2012 style: the embedded default data.

The generator builds canonical records (clinical.records) only; storing them goes through
the ingestion service like any other source, and writers export them as PhysioNet
challenge files or FHIR R4 ndjson for ingestion tests.
"""

from vitalcast.synth.cohort import DEATH_RATE, SOURCE, generate_cohort
from vitalcast.synth.service import split_by_stay, store_cohort

__all__ = ["DEATH_RATE", "SOURCE", "generate_cohort", "split_by_stay", "store_cohort"]
