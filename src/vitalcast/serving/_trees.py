"""Tree ensembles flattened into numpy arrays and traversed without per-tree Python calls.

scikit-learn's tree kernels are fast C, but each call pays input validation, a joblib or
OpenMP dispatch and one Python call per tree: for one row that costs milliseconds, while the
trees themselves take microseconds. Here every node of every tree lives in one set of
arrays (feature, threshold, missing-go-left, left, right, value) and a row walks all trees
at once, one numpy step per tree level. Leaves point to themselves, so walking past a leaf
is harmless and the loop needs no per-tree bookkeeping.

The split rule is copied from scikit-learn 1.9's kernels, which decide identically:

* ``sklearn/tree/_tree.pyx`` (``_apply_dense``): NaN goes where ``missing_go_to_left``
  says, else ``x <= threshold`` goes left; the input is cast to float32 first
  (``DTYPE``), so the compiled form casts too;
* ``sklearn/ensemble/_hist_gradient_boosting/_predictor.pyx``
  (``_predict_one_from_raw_data``): the same rule on float64 input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vitalcast.serving._prep import Uncompilable

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]

# Rows scored per chunk in batch mode, bounding the (rows x trees) work arrays.
_BATCH_CELLS = 1 << 20


@dataclass
class Forest:
    """All trees of an ensemble as flat node arrays; ``roots[t]`` is tree t's first node."""

    feature: IntArray
    threshold: FloatArray
    missing_left: NDArray[np.bool_]
    left: IntArray
    right: IntArray
    is_leaf: NDArray[np.bool_]
    value: FloatArray
    roots: IntArray
    depth: int
    float32_input: bool
    # True: evaluate every node's split once per row, then hop child pointers (cheap when
    # the trees are small, as in gradient boosting); False: walk level by level (deep
    # random-forest trees, where nodes vastly outnumber trees).
    all_nodes: bool

    def leaf_values_row(self, z: FloatArray) -> FloatArray:
        """The value of the leaf each tree reaches for one transformed row."""
        if self.float32_input:
            z = z.astype(np.float32).astype(np.float64)
        idx = self.roots
        if self.all_nodes:
            v = z[self.feature]
            go_left = np.where(np.isnan(v), self.missing_left, v <= self.threshold)
            child = np.where(go_left, self.left, self.right)
            for _ in range(self.depth):
                idx = child[idx]
        else:
            for level in range(self.depth):
                v = z[self.feature[idx]]
                go_left = np.where(np.isnan(v), self.missing_left[idx], v <= self.threshold[idx])
                idx = np.where(go_left, self.left[idx], self.right[idx])
                if level % 8 == 7 and self.is_leaf[idx].all():
                    break
        return self.value[idx]

    def leaf_values_batch(self, z: FloatArray) -> FloatArray:
        """Leaf values, shape (rows, trees), for a transformed matrix."""
        if self.float32_input:
            z = z.astype(np.float32).astype(np.float64)
        out = np.empty((z.shape[0], self.roots.shape[0]))
        step = max(1, _BATCH_CELLS // max(1, self.roots.shape[0]))
        for start in range(0, z.shape[0], step):
            chunk = z[start : start + step]
            idx = np.broadcast_to(self.roots, (chunk.shape[0], self.roots.shape[0]))
            for level in range(self.depth):
                v = np.take_along_axis(chunk, self.feature[idx], axis=1)
                go_left = np.where(np.isnan(v), self.missing_left[idx], v <= self.threshold[idx])
                idx = np.where(go_left, self.left[idx], self.right[idx])
                if level % 8 == 7 and self.is_leaf[idx].all():
                    break
            out[start : start + step] = self.value[idx]
        return out


def _choose_all_nodes(n_nodes: int, n_trees: int, depth: int) -> bool:
    # Rough per-row cost in microseconds of the two strategies on one core: numpy calls
    # cost about 1 us each plus a few ns per element (measured in bench/serving_hotpath.py).
    all_nodes = 6 * (1.0 + 0.004 * n_nodes) + depth * (0.4 + 0.002 * n_trees)
    by_level = depth * 7 * (1.0 + 0.004 * n_trees)
    return all_nodes < by_level


def _assemble(trees: list[dict[str, Any]], float32_input: bool) -> Forest:
    offsets = np.cumsum([0] + [len(t["feature"]) for t in trees])
    parts: dict[str, list[Any]] = {k: [] for k in trees[0] if k != "depth"}
    for off, tree in zip(offsets, trees, strict=False):
        own = off + np.arange(len(tree["feature"]), dtype=np.intp)
        leaf = tree["is_leaf"]
        tree = dict(tree)
        tree["left"] = np.where(leaf, own, off + tree["left"])
        tree["right"] = np.where(leaf, own, off + tree["right"])
        tree["feature"] = np.where(leaf, 0, tree["feature"])
        for k in parts:
            parts[k].append(tree[k])
    flat = {k: np.concatenate(v) for k, v in parts.items()}
    depth = max(int(t["depth"]) for t in trees)
    n_nodes, n_trees = int(offsets[-1]), len(trees)
    return Forest(
        feature=flat["feature"].astype(np.intp),
        threshold=flat["threshold"].astype(np.float64),
        missing_left=flat["missing_left"].astype(bool),
        left=flat["left"].astype(np.intp),
        right=flat["right"].astype(np.intp),
        is_leaf=flat["is_leaf"].astype(bool),
        value=flat["value"].astype(np.float64),
        roots=offsets[:-1].astype(np.intp),
        depth=depth,
        float32_input=float32_input,
        all_nodes=_choose_all_nodes(n_nodes, n_trees, depth),
    )


def flatten_hist_gradient_boosting(est: Any) -> tuple[Forest, float]:
    """Trees and baseline (raw score before any tree) of a binary HistGradientBoosting."""
    if getattr(est, "is_categorical_", None) is not None and np.any(est.is_categorical_):
        raise Uncompilable("HistGradientBoosting native categorical splits are not compiled")
    if est.n_trees_per_iteration_ != 1 or len(est.classes_) != 2:
        raise Uncompilable("only binary HistGradientBoostingClassifier is compiled")
    trees = []
    for (predictor,) in est._predictors:
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            raise Uncompilable("HistGradientBoosting categorical split found")
        trees.append(
            {
                "feature": nodes["feature_idx"],
                "threshold": nodes["num_threshold"],
                "missing_left": nodes["missing_go_to_left"],
                "left": nodes["left"].astype(np.intp),
                "right": nodes["right"].astype(np.intp),
                "is_leaf": nodes["is_leaf"].astype(bool),
                "value": nodes["value"],
                "depth": int(nodes["depth"].max()),
            }
        )
    if not trees:
        raise Uncompilable("HistGradientBoosting has no trees")
    baseline = float(np.asarray(est._baseline_prediction).reshape(-1)[0])
    return _assemble(trees, float32_input=False), baseline


def flatten_forest(est: Any) -> Forest:
    """Trees of a binary RandomForestClassifier or ExtraTreesClassifier (class-1 fractions)."""
    if est.n_outputs_ != 1 or len(est.classes_) != 2:
        raise Uncompilable("only single-output binary forests are compiled")
    trees = []
    for member in est.estimators_:
        t = member.tree_
        leaf = t.children_left == -1
        if t.value.shape[2] != 2:
            raise Uncompilable("a tree of the forest does not see both classes")
        # scikit-learn >= 1.4 stores class fractions at each node; predict_proba returns them.
        trees.append(
            {
                "feature": t.feature,
                "threshold": t.threshold,
                "missing_left": t.missing_go_to_left,
                "left": t.children_left.astype(np.intp),
                "right": t.children_right.astype(np.intp),
                "is_leaf": leaf,
                "value": t.value[:, 0, 1],
                "depth": int(t.max_depth),
            }
        )
    return _assemble(trees, float32_input=True)
