"""Evaluation metrics: hand-computed tables, HD95 against SciPy, Rand error known answers."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist, directed_hausdorff

from conftest import shared_dataset
from unet_lowered.dataset.masks import label_components
from unet_lowered.errors import UnetError
from unet_lowered.evaluation import metrics as M


def rect(r0: int, r1: int, c0: int, c1: int, shape=(6, 6)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


A = rect(0, 1, 0, 4)  # 4 px
HALF = rect(0, 1, 0, 2)  # 2 of A's pixels
SHIFTED = rect(0, 2, 2, 4)  # 4 px, 2 shared with A
FAR = rect(5, 6, 0, 4)  # disjoint from A
EMPTY = np.zeros((6, 6), bool)

# truth, prediction, Dice, IoU, precision, recall
OVERLAP_TABLE = [
    ("perfect", A, A, 1.0, 1.0, 1.0, 1.0),
    ("disjoint", A, FAR, 0.0, 0.0, 0.0, 0.0),
    ("half", A, HALF, 2 / 3, 1 / 2, 1.0, 1 / 2),
    ("half-swapped", HALF, A, 2 / 3, 1 / 2, 1 / 2, 1.0),
    ("shifted", A, SHIFTED, 1 / 2, 1 / 3, 1 / 2, 1 / 2),
    ("both-empty", EMPTY, EMPTY, 1.0, 1.0, 1.0, 1.0),
    ("false-positive", EMPTY, A, 0.0, 0.0, 0.0, 0.0),
    ("missed", A, EMPTY, 0.0, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize(
    ("truth", "pred", "d", "j", "p", "r"),
    [row[1:] for row in OVERLAP_TABLE],
    ids=[row[0] for row in OVERLAP_TABLE],
)
def test_overlap_table(truth, pred, d, j, p, r):
    assert M.dice(truth, pred) == pytest.approx(d)
    assert M.iou(truth, pred) == pytest.approx(j)
    assert M.precision(truth, pred) == pytest.approx(p)
    assert M.recall(truth, pred) == pytest.approx(r)


@pytest.mark.parametrize(
    "convert",
    [
        lambda m: m.astype(np.uint8) * 255,
        lambda m: m.astype(np.float32),
        lambda m: m[..., None],
    ],
    ids=["uint8-255", "float-0-1", "HW1"],
)
def test_masks_in_other_encodings(convert):
    assert M.dice(convert(A), convert(HALF)) == pytest.approx(2 / 3)


def test_probabilities_are_rejected():
    with pytest.raises(UnetError, match="threshold it first"):
        M.dice(A, np.full((6, 6), 0.7))


def test_size_mismatch_is_rejected():
    with pytest.raises(UnetError, match=r"true mask \(6, 6\) and predicted mask \(5, 6\) differ"):
        M.score(A, A[:5])


def test_non_2d_is_rejected():
    with pytest.raises(UnetError, match=r"2-D mask .* got shape \(2, 6, 6\)"):
        M.iou(np.stack([A, A]), np.stack([A, A]))


# ---- surfaces and Hausdorff ------------------------------------------------------------------


def test_surface_of_a_square_is_its_outline():
    square = rect(1, 6, 1, 6, shape=(7, 7))  # 5x5
    s = M.surface(square)
    assert s.sum() == 16  # 5*4 - 4 corners counted once
    assert not s[2:5, 2:5].any()
    assert M.surface(rect(0, 1, 0, 1)).sum() == 1  # one pixel is its own surface
    assert M.surface(np.ones((4, 4), bool)).sum() == 12  # the image border is surface


@pytest.mark.parametrize(
    ("truth", "pred", "expected"),
    [
        (rect(2, 3, 2, 3, (20, 20)), rect(5, 6, 6, 7, (20, 20)), 5.0),  # 3-4-5 triangle
        (rect(2, 3, 2, 12, (20, 20)), rect(9, 10, 2, 12, (20, 20)), 7.0),  # parallel lines
        (rect(2, 8, 2, 8, (20, 20)), rect(2, 8, 2, 8, (20, 20)), 0.0),  # identical
        (EMPTY, EMPTY, 0.0),
        (EMPTY, A, math.inf),
        (A, EMPTY, math.inf),
    ],
    ids=["two-points", "parallel-lines", "identical", "both-empty", "fp", "missed"],
)
def test_hd95_known_distances(truth, pred, expected):
    assert M.hd95(truth, pred) == pytest.approx(expected)


def surface_points(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(M.surface(mask)).astype(float)


SHAPES = [
    (rect(3, 13, 3, 13, (24, 24)), rect(1, 16, 0, 15, (24, 24))),  # square in a bigger one
    (rect(3, 13, 3, 13, (24, 24)), rect(6, 20, 9, 23, (24, 24))),  # overlapping squares
    (rect(0, 4, 0, 24, (24, 24)), rect(18, 24, 5, 9, (24, 24))),  # bar and distant block
]


@pytest.mark.parametrize(("truth", "pred"), SHAPES, ids=["nested", "overlap", "apart"])
def test_hausdorff_matches_scipy(truth, pred):
    a, b = surface_points(truth), surface_points(pred)
    want = max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])
    assert M.hausdorff(truth, pred, 100) == pytest.approx(want)
    # HD95 from brute-force pairwise distances of the surface points.
    d = cdist(a, b)
    want95 = max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))
    assert M.hd95(truth, pred) == pytest.approx(want95)
    assert M.hd95(pred, truth) == pytest.approx(want95)  # symmetric


@pytest.mark.parametrize("seed", range(3))
def test_surfaces_and_distances_equal_scipy_on_the_whole_image(seed: int) -> None:
    """Bit for bit: the surface is SciPy's erosion with the 4-neighbourhood, and each
    distance is SciPy's exact Euclidean distance transform of the whole image read at
    the surface pixels (as the distances were computed before the k-d tree)."""
    rng = np.random.default_rng(seed)
    cross = ndimage.generate_binary_structure(2, 1)
    for _ in range(40):
        h, w = rng.integers(2, 120, 2)
        t = ndimage.binary_opening(rng.random((h, w)) < rng.uniform(0.2, 0.8))
        p = ndimage.binary_opening(rng.random((h, w)) < rng.uniform(0.2, 0.8))
        t[rng.integers(h), rng.integers(w)] = p[rng.integers(h), rng.integers(w)] = True
        st, sp = (m & ~ndimage.binary_erosion(m, cross, border_value=0) for m in (t, p))
        assert np.array_equal(M.surface(t), st) and np.array_equal(M.surface(p), sp)
        to_pred, to_true = M.surface_distances(t, p)
        assert np.array_equal(to_pred, ndimage.distance_transform_edt(~sp)[st])
        assert np.array_equal(to_true, ndimage.distance_transform_edt(~st)[sp])


def test_surface_distances_need_both_masks():
    with pytest.raises(UnetError, match="one of them is empty"):
        M.surface_distances(A, EMPTY)


# ---- score, per class, summary ------------------------------------------------------------


def test_score_has_every_key():
    s = M.score(A, HALF)
    assert tuple(s) == M.SCORE_KEYS
    assert s["dice"] == pytest.approx(2 / 3)
    # HALF->A all 0; A->HALF 0, 0, 1, 2: 95th percentile at rank 0.95 * 3 = 2.85 -> 1.85
    assert s["hd95"] == pytest.approx(1.85)
    assert s["fg_true"] == pytest.approx(4 / 36)
    assert s["fg_pred"] == pytest.approx(2 / 36)


def test_per_class_scores():
    truth = np.zeros((6, 6), np.int64)
    truth[0, :4] = 1
    truth[5, :4] = 2
    pred = truth.copy()
    pred[0, 2:4] = 0  # class 1: half; class 2: perfect
    scores = M.per_class_scores(truth, pred, 3)
    assert set(scores) == {1, 2}
    assert scores[1]["dice"] == pytest.approx(2 / 3)
    assert scores[2]["dice"] == 1.0 and scores[2]["hd95"] == 0.0
    with pytest.raises(UnetError, match=r"outside 0\.\.1 .* check num_classes"):
        M.per_class_scores(truth, pred, 2)


def test_summarize_leaves_out_infinite_values_and_counts_them():
    s = M.summarize([1.0, 3.0, math.inf, 2.0])
    assert s == {
        "n": 4,
        "n_nonfinite": 1,
        "mean": 2.0,
        "median": 2.0,
        "std": pytest.approx(math.sqrt(2 / 3)),
        "min": 1.0,
        "max": 3.0,
    }
    assert M.summarize([math.inf])["mean"] is None


# ---- Rand error ---------------------------------------------------------------------------


def brute_force_rand_error(t: np.ndarray, p: np.ndarray) -> float:
    """1 - F over ordered pairs of distinct pixels whose true label is not 0."""
    idx = np.flatnonzero(t.ravel() != 0)
    tv, pv = t.ravel()[idx], p.ravel()[idx]
    both = same_t = same_p = 0
    for i, j in product(range(idx.size), repeat=2):
        if i == j:
            continue
        st, sp = tv[i] == tv[j], pv[i] == pv[j]
        both += st and sp
        same_t += st
        same_p += sp
    return 1.0 - both / (0.5 * same_t + 0.5 * same_p) if same_t + same_p else 0.0


def test_adapted_rand_error_hand_values():
    one = np.array([[1, 1, 1, 1]])
    split = np.array([[1, 1, 2, 2]])
    # truth one segment of 4 (12 ordered pairs), prediction two of 2 (2+2 pairs), 4 shared:
    # F = 4 / (0.5*12 + 0.5*4) = 0.5
    assert M.adapted_rand_error(one, split) == pytest.approx(0.5)
    assert M.adapted_rand_error(split, one) == pytest.approx(0.5)
    assert M.adapted_rand_error(split, split) == 0.0
    assert M.adapted_rand_error(split, np.array([[7, 7, 3, 3]])) == 0.0  # label names do not matter


def test_adapted_rand_error_ignores_true_background_only():
    truth = np.array([[1, 1, 0, 2, 2]])
    # Prediction labels membrane pixel 2 as a cell: ignored (true label 0).
    assert M.adapted_rand_error(truth, np.array([[5, 5, 5, 6, 6]])) == 0.0
    # Prediction label 0 on true cell pixels is a segment like any other: merges 1 and 2.
    assert M.adapted_rand_error(truth, np.array([[0, 0, 0, 0, 0]])) == pytest.approx(
        1 - 4 / (0.5 * 4 + 0.5 * 12)
    )
    assert (
        M.adapted_rand_error(np.zeros((3, 3), int), np.ones((3, 3), int)) == 0.0
    )  # nothing to compare


def test_adapted_rand_error_matches_pair_counting(rng):
    for _ in range(5):
        t = rng.integers(0, 4, (4, 5))
        p = rng.integers(0, 3, (4, 5))
        assert M.adapted_rand_error(t, p) == pytest.approx(brute_force_rand_error(t, p))


def test_adapted_rand_error_rejects_float_maps():
    with pytest.raises(UnetError, match=r"label masks with label_components\(mask, 4\) first"):
        M.adapted_rand_error(np.ones((2, 2)), np.ones((2, 2)))


def test_challenge_rand_error_hand_values():
    one = np.array([[1, 1, 1, 1]])
    thick = np.array([[1, 1, 0, 0]])  # the right half predicted as membrane
    # Challenge: the two predicted-membrane pixels are singletons. n_ij = {2, 1, 1}:
    # sum n_ij^2 = 6, sum a_i^2 = 16, sum b_j^2 = 6 -> P = 1, R = 6/16, F = 6/11.
    assert M.rand_error(one, thick) == pytest.approx(1 - 6 / 11)
    # scikit-image: predicted membrane is one segment {2, 2}: P = 1, R = 4/12, F = 1/2.
    assert M.adapted_rand_error(one, thick) == pytest.approx(0.5)
    assert M.rand_error(one, one) == 0.0
    assert M.rand_error(np.array([[1, 1, 0, 2, 2]]), np.array([[3, 3, 3, 4, 4]])) == 0.0
    assert M.rand_error(np.zeros((2, 2), int), np.ones((2, 2), int)) == 0.0  # no true cells


def test_challenge_rand_error_matches_pair_counting_with_singletons(rng):
    for _ in range(5):
        t = rng.integers(0, 4, (4, 5))
        p = rng.integers(0, 3, (4, 5))
        singletons = p.copy()
        singletons[p == 0] = 100 + np.arange(int((p == 0).sum()))
        # n^2 pairs: ordered pairs with the pixel itself, i.e. distinct pairs + n
        keep = t != 0
        tv, pv = t[keep], singletons[keep]
        same_t = (tv[:, None] == tv[None, :]).sum()
        same_p = (pv[:, None] == pv[None, :]).sum()
        both = ((tv[:, None] == tv[None, :]) & (pv[:, None] == pv[None, :])).sum()
        precision, recall = both / same_p, both / same_t
        want = 1 - 2 * precision * recall / (precision + recall)
        assert M.rand_error(t, p) == pytest.approx(want)


def test_best_rand_error_picks_the_best_threshold():
    truth = np.array([[1, 1, 0, 2, 2]])
    prob = np.array([[0.9, 0.8, 0.5, 0.7, 0.6]])
    # 0.55 < t < 0.6: the membrane pixel splits the cells exactly; t >= 0.5 keeps it membrane.
    error, threshold = M.best_rand_error(truth, prob, thresholds=(0.4, 0.55, 0.65))
    assert error == 0.0 and threshold == 0.55
    assert M.best_rand_error(truth, prob[..., None], thresholds=(0.4,))[0] > 0  # merged


def test_label_components_separates_cells_across_a_diagonal_membrane():
    cells = np.ones((4, 4), bool)
    cells[[0, 1, 2, 3], [3, 2, 1, 0]] = False  # anti-diagonal membrane
    assert label_components(cells, 4)[1] == 2  # 4-connectivity: two cells
    assert label_components(cells, 8)[1] == 1  # 8-connectivity leaks
    assert label_components(cells)[1] == 1  # 8 is the default: objects of a mask
    with pytest.raises(UnetError, match="connectivity must be 4 or 8"):
        label_components(cells, connectivity=2)


@pytest.mark.realdata
def test_rand_error_on_isbi2012_labels():
    import cv2

    folder = shared_dataset("isbi2012") / "train" / "label"
    label = cv2.imread(str(folder / "0.png"), cv2.IMREAD_GRAYSCALE)
    truth = label_components(label > 127, 4)[0]
    assert truth.max() > 50  # many cells
    assert M.rand_error(truth, truth) == 0.0
    # Merging every cell into one (all membranes lost) is a large error.
    assert M.rand_error(truth, np.ones_like(truth)) > 0.9
    assert M.adapted_rand_error(truth, np.ones_like(truth)) > 0.9


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("thicker", "challenge", "skimage"), [(1, 0.044, 0.115), (2, 0.088, 0.296)]
)
def test_rand_error_conventions_on_thicker_isbi2012_membranes(thicker, challenge, skimage):
    """Cells eroded by 1 or 2 px (4-neighbour steps, not at the image edge), mean of 24 slices."""
    import cv2

    cross = ndimage.generate_binary_structure(2, 1)
    ours, theirs = [], []
    for path in sorted((shared_dataset("isbi2012") / "train" / "label").glob("*.png")):
        cells = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127
        truth = label_components(cells, 4)[0]
        eroded = ndimage.binary_erosion(cells, cross, iterations=thicker, border_value=1)
        pred = label_components(eroded, 4)[0]
        ours.append(M.rand_error(truth, pred))
        theirs.append(M.adapted_rand_error(truth, pred))
    assert len(ours) == 24
    assert np.mean(ours) == pytest.approx(challenge, abs=0.001)
    assert np.mean(theirs) == pytest.approx(skimage, abs=0.001)


# ---------------------------------------------------------------- the leaderboard's thinning


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """The same lines (label 0) and the same segments, up to renaming the labels."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist(), strict=True))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def test_thin_borders_is_fijis_watershed(rng):
    """Against a line-by-line port of Fiji's WatershedTransform2D (tests/fiji_watershed.py)
    on 300 random maps, ties where two floods meet included."""
    from fiji_watershed import fiji_watershed

    for _ in range(300):
        h, w = rng.integers(1, 28, 2)
        noise = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 2.0))
        cells = noise > np.quantile(noise, rng.uniform(0.2, 0.95))
        assert same_partition(M.thin_borders(cells), fiji_watershed(cells)), cells.astype(int)


def test_thinning_known_answers():
    # two cells behind a 5-px predicted membrane; the true line is its middle column
    cells = np.zeros((4, 11), bool)
    cells[:, :3] = cells[:, 8:] = True
    thinned = M.thin_borders(cells)
    assert (thinned[:, 5] == 0).all() and len(np.unique(thinned[:, :5])) == 1
    assert len(np.unique(thinned[:, 6:])) == 1 and thinned[0, 0] != thinned[0, 10]
    truth = np.zeros((4, 11), np.int32)
    truth[:, :5], truth[:, 6:] = 1, 2
    assert M.rand_error_thinned(truth, cells) == 0.0
    assert M.rand_error(truth, label_components(cells, 4)[0]) > 0.2  # 4 of 10 columns singletons
    # no cell predicted: one segment over both true cells of 20 px each (precision 1/2)
    assert M.rand_error_thinned(truth, np.zeros((4, 11), bool)) == pytest.approx(1 - 2 / 3)


def test_leaderboard_thresholds_are_the_scripts_floats():
    th = M.leaderboard_thresholds()
    assert len(th) == 11 and th[0] == 0.0 and th[3] == 0.30000000000000004
    assert th[-1] == 0.9999999999999999  # 1.0 itself is never reached


def test_leaderboard_rand_error_takes_one_threshold_for_the_stack():
    """Each slice alone is perfect at some threshold, but not both at one: the script
    averages the slices at each threshold, so the figure is 1/6, not 0."""
    truth = np.zeros((4, 11), np.int32)
    truth[:, :5], truth[:, 6:] = 1, 2
    first = np.zeros((4, 11))
    first[:, :3] = first[:, 8:] = 0.75  # right up to 0.7; from 0.8 no cell: one segment
    second = np.full((4, 11), 0.75)
    second[:, :3] = second[:, 8:] = 0.95  # up to 0.7 all one cell; right at 0.8 and 0.9
    merged = 1 - 2 / 3  # one segment over two true cells of 20 px: precision 1/2
    for probs in ([first], [second]):
        assert M.leaderboard_rand_error([truth], probs)[0] == 0.0
    error, threshold = M.leaderboard_rand_error([truth, truth], [first, second])
    assert error == pytest.approx(merged / 2) and threshold == 0.0  # the first of the ties
    with pytest.raises(UnetError, match="2 true label maps for 1 probability maps"):
        M.leaderboard_rand_error([truth, truth], [first])


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize(
    ("thicker", "plain", "leaderboard"), [(1, 0.044, 0.0009), (2, 0.088, 0.0019)]
)
def test_thinning_forgives_thicker_isbi2012_membranes(thicker, plain, leaderboard):
    """The thicker membranes of the test above, all 24 slices (the README's figures):
    the leaderboard's thinning gives the cells back what the membranes took."""
    import cv2

    cross = ndimage.generate_binary_structure(2, 1)
    truths, probs, errors = [], [], []
    for path in sorted((shared_dataset("isbi2012") / "train" / "label").glob("*.png")):
        cells = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127
        truth = label_components(cells, 4)[0]
        eroded = ndimage.binary_erosion(cells, cross, iterations=thicker, border_value=1)
        truths.append(truth)
        probs.append(eroded.astype(np.float32))
        errors.append(M.rand_error(truth, label_components(eroded, 4)[0]))
    error, threshold = M.leaderboard_rand_error(truths, probs)
    assert len(truths) == 24 and np.mean(errors) == pytest.approx(plain, abs=0.001)
    assert error == pytest.approx(leaderboard, abs=0.0001) and threshold == 0.0
