"""Fuse the members of a calibrated boosting ensemble into one preprocessing and one forest.

``CalibratedClassifierCV(ensemble=True)`` keeps one fitted pipeline per fold (5 by
default) and averages their calibrated outputs. Scored member by member, a row pays the
fixed numpy-call cost of preprocessing and tree traversal five times. Fused, the members'
preprocessors become one (their outputs side by side), their trees one bitvector forest
reading that wider row, and per-member raw scores come back with one ``add.reduceat``;
Platt calibrators are applied to all members in one vectorised call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit

from vitalcast.serving._nodes import Boosted, Calibrated, Isotonic, Node, Prepared, Sigmoid
from vitalcast.serving._prep import Preprocessor
from vitalcast.serving._trees import Forest

FloatArray = NDArray[np.float64]


@dataclass
class FusedBoostedCalibration:
    """Same result as :class:`Calibrated` over ``Prepared``/``Boosted`` members, fused."""

    pre: Preprocessor | None
    forest: Forest
    member_tree_start: NDArray[np.intp]
    baseline: FloatArray
    calibrators: list[Sigmoid | Isotonic]
    sigmoid_a: FloatArray | None
    sigmoid_b: FloatArray | None
    has_decision: bool = False

    def _calibrate(self, raw: FloatArray) -> FloatArray:
        # raw: (members,) or (members, rows)
        if self.sigmoid_a is not None and self.sigmoid_b is not None:
            a = self.sigmoid_a.reshape((-1,) + (1,) * (raw.ndim - 1))
            b = self.sigmoid_b.reshape(a.shape)
            out: FloatArray = expit(-(a * raw + b))
            return out
        return np.stack([c.apply(r) for c, r in zip(self.calibrators, raw, strict=True)])

    def response_row(self, x: FloatArray) -> float:
        z = x if self.pre is None else self.pre.transform_row(x)
        leaves = self.forest.leaf_values_row(z)
        raw = self.baseline + np.add.reduceat(leaves, self.member_tree_start)
        proba = self._calibrate(raw)
        return float(proba.sum() / proba.shape[0])

    def response_batch(self, x: FloatArray) -> FloatArray:
        z = x if self.pre is None else self.pre.transform_batch(x)
        leaves = self.forest.leaf_values_batch(z)
        raw = self.baseline[:, None] + np.add.reduceat(leaves, self.member_tree_start, axis=1).T
        out: FloatArray = self._calibrate(raw).sum(axis=0) / raw.shape[0]
        return out


def fuse_calibrated(node: Calibrated) -> Node:
    """The fused form when every member is bitvector-scored boosting, else ``node`` itself."""
    pres: list[Preprocessor] = []
    boosted: list[Boosted] = []
    for member, _ in node.members:
        inner = member.inner if isinstance(member, Prepared) else member
        if not isinstance(inner, Boosted) or not inner.forest.bitvector:
            return node
        if isinstance(member, Prepared):
            pres.append(member.pre)
        boosted.append(inner)
    if pres and len(pres) != len(boosted):
        return node
    widths = [b.forest.n_inputs for b in boosted]
    if not pres and len(set(widths)) != 1:
        return node
    offsets = np.cumsum([0, *widths])[:-1] if pres else np.zeros(len(widths), dtype=np.intp)
    total = int(sum(widths)) if pres else widths[0]
    forests = [b.forest for b in boosted]
    calibrators = [c for _, c in node.members]
    platt = [c for c in calibrators if isinstance(c, Sigmoid)]
    sigmoid = len(platt) == len(calibrators)
    return FusedBoostedCalibration(
        pre=_stack_preprocessors(pres) if pres else None,
        forest=_stack_forests(forests, [int(o) for o in offsets], total),
        member_tree_start=np.cumsum([0] + [f.n_trees for f in forests])[:-1].astype(np.intp),
        baseline=np.array([b.baseline for b in boosted]),
        calibrators=calibrators,
        sigmoid_a=np.array([c.a for c in platt]) if sigmoid else None,
        sigmoid_b=np.array([c.b for c in platt]) if sigmoid else None,
    )


def _stack_forests(forests: list[Forest], offsets: list[int], total: int) -> Forest:
    features, starts, leaf_starts = [], [], []
    n_nodes = n_leaves = 0
    for forest, off in zip(forests, offsets, strict=True):
        f, d = forest.feature, forest.n_inputs
        # first half of member i's widened row -> off + f; NaN->-inf half -> total + off + f - d
        features.append(np.where(f < d, off + f, total + off + (f - d)))
        starts.append(forest.tree_start + n_nodes)
        leaf_starts.append(forest.leaf_start + n_leaves)
        n_nodes += forest.feature.shape[0]
        n_leaves += forest.leaf_value.shape[0]
    first = forests[0]
    return replace(
        first,
        n_inputs=total,
        feature=np.concatenate(features).astype(np.intp),
        threshold=np.concatenate([f.threshold for f in forests]),
        mask=np.concatenate([f.mask for f in forests]),
        tree_start=np.concatenate(starts).astype(np.intp),
        leaf_start=np.concatenate(leaf_starts).astype(np.intp),
        leaf_value=np.concatenate([f.leaf_value for f in forests]),
        # the level-walk arrays are not used by a bitvector forest
        roots=np.concatenate([f.roots for f in forests]),
    )


def _stack_preprocessors(pres: list[Preprocessor]) -> Preprocessor:
    out_off = np.cumsum([0] + [p.n_out for p in pres])[:-1]

    def cat(attr: str, shift: bool = False) -> Any:
        parts = [getattr(p, attr) + (o if shift else 0) for p, o in zip(pres, out_off, strict=True)]
        return np.concatenate(parts)

    return Preprocessor(
        n_out=int(sum(p.n_out for p in pres)),
        value_src=cat("value_src"),
        value_out=cat("value_out", shift=True),
        value_fill=cat("value_fill"),
        indicator_src=cat("indicator_src"),
        indicator_out=cat("indicator_out", shift=True),
        onehot_src=cat("onehot_src"),
        onehot_start=cat("onehot_start", shift=True),
        onehot_size=cat("onehot_size"),
        onehot_fill_code=cat("onehot_fill_code"),
        mean=cat("mean"),
        scale=cat("scale"),
        categorical=pres[0].categorical,
    )
