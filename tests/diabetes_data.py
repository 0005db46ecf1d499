"""Samples of the real Diabetes 130 export for tests: whole patients, in the file's order."""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from pathlib import Path


def diabetes_sample(
    shared_data: Path,
    out: Path,
    *,
    multi: int = 0,
    min_encounters: int = 3,
    single: int = 0,
    head: int = 0,
) -> set[str]:
    """Write to ``out`` the file's header and, in file order, its first ``head`` rows plus
    every encounter of the first ``multi`` patients with ``min_encounters`` or more and of
    the first ``single`` single-encounter patients; return those patients' numbers."""
    with gzip.open(shared_data / "diabetes130" / "diabetic_data.csv.gz", "rt", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    nbr = header.index("patient_nbr")
    counts = Counter(r[nbr] for r in rows)
    many = list(dict.fromkeys(r[nbr] for r in rows if counts[r[nbr]] >= min_encounters))
    once = list(dict.fromkeys(r[nbr] for r in rows if counts[r[nbr]] == 1))
    chosen = set(many[:multi]) | set(once[:single])
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(r for i, r in enumerate(rows) if i < head or r[nbr] in chosen)
    return set(many[:multi])
