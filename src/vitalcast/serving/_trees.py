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


_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_ZERO = np.uint64(0)
# Trees with more leaves than one machine word are walked level by level instead.
_MAX_WORD_LEAVES = 64


@dataclass
class Forest:
    """All trees of an ensemble as flat arrays, scored with one of two strategies.

    *Bitvector* (QuickScorer, Lucchese et al., SIGIR 2015), for trees of at most 64 leaves
    such as gradient boosting's: number each tree's leaves left to right; every internal
    node carries a mask clearing the leaves of its left subtree. The exit leaf is the lowest
    bit left set after AND-ing the masks of the nodes whose test sends the row right, so a
    row costs a fixed handful of numpy calls over all internal nodes and no depth loop.

    *Level walk*, for deep random-forest trees: all trees step one level per numpy call;
    leaves point to themselves so walking past a leaf is harmless.

    Missing values: the row is widened to ``[z, z with NaN -> -inf]``; a node whose
    ``missing_go_to_left`` is set reads the second half (``-inf <= t`` goes left), the
    others read the first (``NaN <= t`` is False, so NaN goes right). Same decisions as
    the scikit-learn kernels, without an ``isnan`` branch per node.
    """

    n_inputs: int
    float32_input: bool
    bitvector: bool
    # bitvector strategy, over internal nodes (one always-true dummy for a lone leaf)
    feature: IntArray
    threshold: FloatArray
    mask: NDArray[np.uint64]
    tree_start: IntArray
    leaf_start: IntArray
    leaf_value: FloatArray
    # level strategy, over all nodes
    children: NDArray[np.intp]
    node_value: FloatArray
    is_leaf: NDArray[np.bool_]
    roots: IntArray
    depth: int

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    def _widen(self, z: FloatArray) -> FloatArray:
        if self.float32_input:
            z = z.astype(np.float32).astype(np.float64)
        return np.concatenate((z, np.where(np.isnan(z), -np.inf, z)), axis=-1)

    def leaf_values_row(self, z: FloatArray) -> FloatArray:
        """The value of the leaf each tree reaches for one transformed row."""
        zz = self._widen(z)
        if self.bitvector:
            # a true test keeps every bit: OR with all-ones (0 - 1 wraps); np.where on
            # uint64 is ~20x slower than this
            keep = zz[self.feature] <= self.threshold
            masks = self.mask | (_ZERO - keep.astype(np.uint64))
            alive = np.bitwise_and.reduceat(masks, self.tree_start)
            lowest = alive & (~alive + np.uint64(1))
            leaf = np.log2(lowest).astype(np.intp)
            values: FloatArray = self.leaf_value[self.leaf_start + leaf]
            return values
        idx = self.roots
        for level in range(self.depth):
            # NaN <= t is False: NaN takes the right child unless the node reads -inf
            right = ~(zz[self.feature[idx]] <= self.threshold[idx])
            idx = self.children[idx, right.view(np.uint8)]
            if level % 8 == 7 and self.is_leaf[idx].all():
                break
        return self.node_value[idx]

    def leaf_values_batch(self, z: FloatArray) -> FloatArray:
        """Leaf values, shape (rows, trees), for a transformed matrix."""
        out = np.empty((z.shape[0], self.n_trees))
        width = self.feature.shape[0] if self.bitvector else self.n_trees
        step = max(1, _BATCH_CELLS // max(1, width))
        for start in range(0, z.shape[0], step):
            zz = self._widen(z[start : start + step])
            if self.bitvector:
                keep = zz[:, self.feature] <= self.threshold
                masks = self.mask | (_ZERO - keep.astype(np.uint64))
                alive = np.bitwise_and.reduceat(masks, self.tree_start, axis=1)
                lowest = alive & (~alive + np.uint64(1))
                leaf = np.log2(lowest).astype(np.intp)
                out[start : start + step] = self.leaf_value[self.leaf_start + leaf]
                continue
            idx = np.broadcast_to(self.roots, (zz.shape[0], self.n_trees))
            for level in range(self.depth):
                v = np.take_along_axis(zz, self.feature[idx], axis=1)
                right = ~(v <= self.threshold[idx])
                idx = self.children[idx, right.view(np.uint8)]
                if level % 8 == 7 and self.is_leaf[idx].all():
                    break
            out[start : start + step] = self.node_value[idx]
        return out


def _leaf_order(
    left: IntArray, right: IntArray, leaf: NDArray[np.bool_]
) -> tuple[list[int], dict[int, tuple[int, int]]]:
    """Leaves left to right, and for each internal node the leaf range of its left subtree."""
    order: list[int] = []
    span: dict[int, tuple[int, int]] = {}
    # iterative post-order: (node, expanded?)
    stack: list[tuple[int, bool]] = [(0, False)]
    first: dict[int, int] = {}
    while stack:
        node, expanded = stack.pop()
        if leaf[node]:
            first[node] = len(order)
            order.append(node)
        elif not expanded:
            stack.append((node, True))
            stack.append((int(right[node]), False))
            stack.append((int(left[node]), False))
        else:
            first[node] = first[int(left[node])]
            span[node] = (first[int(left[node])], first[int(right[node])])
    return order, span


def _assemble(trees: list[dict[str, Any]], n_inputs: int, float32_input: bool) -> Forest:
    bitvector = all(int(t["is_leaf"].sum()) <= _MAX_WORD_LEAVES for t in trees)
    feat: list[int] = []
    thr: list[float] = []
    mask: list[int] = []
    tree_start: list[int] = []
    leaf_start: list[int] = []
    leaf_value: list[float] = []
    node_off = 0
    children, node_value, is_leaf, roots, node_feat, node_thr = [], [], [], [], [], []
    for tree in trees:
        left, right, leaf = tree["left"], tree["right"], tree["is_leaf"]
        # missing-left nodes read the NaN -> -inf half of the widened row
        wide = np.where(
            tree["missing_left"].astype(bool), tree["feature"] + n_inputs, tree["feature"]
        )
        wide = np.where(leaf, 0, wide)
        own = node_off + np.arange(len(leaf), dtype=np.intp)
        children.append(
            np.stack(
                [np.where(leaf, own, node_off + left), np.where(leaf, own, node_off + right)], 1
            )
        )
        node_value.append(tree["value"])
        is_leaf.append(leaf)
        roots.append(node_off)
        node_feat.append(wide)
        node_thr.append(np.where(leaf, np.inf, tree["threshold"]))
        node_off += len(leaf)
        if not bitvector:
            continue
        order, span = _leaf_order(left, right, leaf)
        tree_start.append(len(feat))
        leaf_start.append(len(leaf_value))
        leaf_value.extend(float(tree["value"][n]) for n in order)
        if not span:  # a single leaf: one always-true test keeps every bit
            feat.append(n_inputs)
            thr.append(np.inf)
            mask.append(int(_ALL))
        for node, (lo, hi) in span.items():
            feat.append(int(wide[node]))
            thr.append(float(tree["threshold"][node]))
            mask.append(int(_ALL) & ~(((1 << (hi - lo)) - 1) << lo))
    level_feat = np.concatenate(node_feat).astype(np.intp)
    level_thr = np.concatenate(node_thr).astype(np.float64)
    return Forest(
        n_inputs=n_inputs,
        float32_input=float32_input,
        bitvector=bitvector,
        feature=np.asarray(feat, dtype=np.intp) if bitvector else level_feat,
        threshold=np.asarray(thr, dtype=np.float64) if bitvector else level_thr,
        mask=np.asarray(mask, dtype=np.uint64),
        tree_start=np.asarray(tree_start, dtype=np.intp),
        leaf_start=np.asarray(leaf_start, dtype=np.intp),
        leaf_value=np.asarray(leaf_value, dtype=np.float64),
        children=np.concatenate(children).astype(np.intp),
        node_value=np.concatenate(node_value).astype(np.float64),
        is_leaf=np.concatenate(is_leaf).astype(bool),
        roots=np.asarray(roots, dtype=np.intp),
        depth=max(int(t["depth"]) for t in trees),
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
    return _assemble(trees, int(est.n_features_in_), float32_input=False), baseline


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
    return _assemble(trees, int(est.n_features_in_), float32_input=True)
