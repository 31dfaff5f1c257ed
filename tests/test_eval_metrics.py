"""jaxgen.eval.metrics against closed forms and naive implementations; input validation.

No feature network here: everything runs on synthetic features in milliseconds.
"""
import numpy as np
import pytest
import scipy.linalg

from jaxgen.eval import (
    class_balanced_indices,
    load_samples_npz,
    sample_metrics,
    score_samples_file,
    validate_images,
)
from jaxgen.eval import metrics as M
from jaxgen.eval.samples import MIN_SAMPLES


def _gauss(n, d, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


# ------------------------------------------------------------------------------ Frechet distance
def test_frechet_of_a_set_with_itself_is_zero():
    x = _gauss(400, 16)
    assert abs(M.frechet_distance_features(x, x)) < 1e-6


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    # Reference: for diagonal covariances (cov1 cov2)^(1/2) = diag(sqrt(s1 s2)).
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = M.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_frechet_matches_sqrtm_formula_for_full_covariances():
    # Reference: the textbook formula with scipy.linalg.sqrtm (as in pytorch-fid).
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    c1, c2 = a @ a.T + 0.1 * np.eye(8), b @ b.T + 0.1 * np.eye(8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    want = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * covmean)
    np.testing.assert_allclose(M.frechet_distance(mu1, c1, mu2, c2), want, rtol=1e-8)


def test_frechet_from_samples_approaches_closed_form():
    rng = np.random.default_rng(3)
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.5, 1.0, 2.0])
    x = rng.normal(size=(40000, 3)) * np.sqrt(s1)
    y = rng.normal(size=(40000, 3)) * np.sqrt(s2) + np.array([1.0, 0.0, -1.0])
    want = 2.0 + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    np.testing.assert_allclose(M.frechet_distance_features(x, y), want, rtol=0.03)


def test_frechet_is_finite_for_singular_covariances():
    x, y = _gauss(20, 64, seed=4), _gauss(20, 64, shift=1.0, seed=5)  # N < D: rank-deficient
    fd = M.frechet_distance_features(x, y)
    assert np.isfinite(fd) and fd > 0


# ------------------------------------------------------------------------------- kernel distance
def _mmd2_naive(x, y):
    k = lambda a, b: (np.dot(a, b) / len(a) + 1.0) ** 3
    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
    return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * sxy / (m * n)


def test_mmd2_matches_naive_double_loop():
    x, y = _gauss(6, 3, seed=6), _gauss(5, 3, shift=0.3, seed=7)
    np.testing.assert_allclose(M.mmd2_unbiased(x, y), _mmd2_naive(x, y), rtol=1e-12)


def test_mmd2_is_unbiased_where_the_biased_estimate_is_not():
    # Many independent small replications from one distribution: the unbiased estimate averages
    # to 0 within 4 standard errors; the biased (V-statistic) one is clearly positive.
    rng = np.random.default_rng(8)
    unb, biased = [], []
    for _ in range(300):
        x, y = rng.normal(size=(15, 4)), rng.normal(size=(15, 4))
        unb.append(M.mmd2_unbiased(x, y))
        kxx, kyy = M.polynomial_kernel(x, x), M.polynomial_kernel(y, y)
        biased.append(kxx.mean() + kyy.mean() - 2 * M.polynomial_kernel(x, y).mean())
    unb, biased = np.array(unb), np.array(biased)
    se = unb.std(ddof=1) / np.sqrt(len(unb))
    assert abs(unb.mean()) < 4 * se
    assert biased.mean() > 10 * biased.std(ddof=1) / np.sqrt(len(biased))


def test_kid_near_zero_for_one_distribution_and_positive_when_shifted():
    x, y = _gauss(600, 16, seed=9), _gauss(600, 16, seed=10)
    mean, std = M.kernel_distance(x, y, num_subsets=50, seed=0)
    assert std > 0 and abs(mean) < 3 * std
    mean_s, std_s = M.kernel_distance(x, _gauss(600, 16, shift=0.5, seed=11), num_subsets=50)
    assert mean_s > 10 * std_s and mean_s > 10 * abs(mean)


def test_kid_is_seeded():
    x, y = _gauss(100, 4, seed=12), _gauss(120, 4, seed=13)
    assert M.kernel_distance(x, y, seed=3) == M.kernel_distance(x, y, seed=3)
    assert M.kernel_distance(x, y, seed=3) != M.kernel_distance(x, y, seed=4)


# -------------------------------------------------------------------------- precision and recall
def test_knn_radii_match_brute_force():
    x = _gauss(50, 5, seed=14)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(M.knn_radii(x, 3), np.sort(d, axis=1)[:, 2], rtol=1e-9)


def test_precision_recall_are_one_on_identical_sets():
    x = _gauss(300, 8, seed=15)
    assert M.precision_recall(x, x.copy()) == (1.0, 1.0)


def test_precision_recall_fall_as_the_set_moves_away():
    real = _gauss(400, 8, seed=16)
    fake0 = _gauss(400, 8, seed=17)
    pr = [M.precision_recall(real, fake0 + s) for s in (0.0, 0.3, 0.6, 1.0, 3.0)]
    p, r = np.array(pr).T
    assert np.all(np.diff(p) <= 0) and np.all(np.diff(r) <= 0)
    assert p[0] > 0.5 and r[0] > 0.5 and p[-1] < 0.05 and r[-1] < 0.05


def test_mode_dropping_lowers_recall_not_precision():
    rng = np.random.default_rng(18)
    centers = np.eye(4) * 10
    real = np.concatenate([c + rng.normal(size=(200, 4)) for c in centers])
    fake = np.concatenate([c + rng.normal(size=(400, 4)) for c in centers[:2]])
    p, r = M.precision_recall(real, fake)
    assert p > 0.9 and 0.4 < r < 0.6


# ------------------------------------------------------------------------ classifier statistics
def test_classifier_score_extremes_and_formula():
    confident = np.eye(10)[np.arange(100) % 10] * 50.0
    np.testing.assert_allclose(M.classifier_score(confident), 10.0, rtol=1e-6)
    np.testing.assert_allclose(M.classifier_score(np.tile(confident[:1], (100, 1))), 1.0, rtol=1e-6)
    logits = np.random.default_rng(19).normal(size=(30, 10)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    py = p.mean(0)
    want = np.exp(np.mean([np.sum(pi * np.log(pi / py)) for pi in p]))
    np.testing.assert_allclose(M.classifier_score(logits), want, rtol=1e-10)


def test_class_fractions():
    logits = np.eye(10)[[0, 0, 3, 9]]
    f = M.class_fractions(logits)
    assert len(f) == 10 and f[0] == 0.5 and f[3] == 0.25 and f[9] == 0.25 and sum(f) == 1.0


# ------------------------------------------------------------------------------ input validation
def _digits(n=20, dtype=np.float32):
    x = np.random.default_rng(0).uniform(size=(n, 28, 28))
    return (x * 255).astype(np.uint8) if dtype == np.uint8 else x.astype(dtype)


def test_accepted_inputs_agree():
    u8 = _digits(dtype=np.uint8)
    want = u8[..., None].astype(np.float32) / 255
    for x in (u8, u8[..., None], want, want.astype(np.float64), want[..., 0]):
        out = validate_images(x)
        assert out.dtype == np.float32 and out.shape == (20, 28, 28, 1)
        np.testing.assert_allclose(out, want, atol=1e-7)
    np.testing.assert_array_equal(validate_images(u8 > 127), (u8 > 127)[..., None])
    np.testing.assert_array_equal(validate_images((u8 > 127).astype(np.uint8)), (u8 > 127)[..., None])


@pytest.mark.parametrize("images, match", [
    (np.zeros((20, 28, 27)), r"shape \[N, 28, 28\]"),
    (np.zeros((20, 28, 28, 3)), r"shape \[N, 28, 28\]"),
    (np.zeros((28, 28)), r"shape \[N, 28, 28\]"),
    (np.full((20, 28, 28), 2.0), r"in \[0, 1\]"),
    (np.full((20, 28, 28), -0.5), r"in \[0, 1\]"),
    (np.full((20, 28, 28), 300, np.int64), r"uint8"),
    (np.full((20, 28, 28), 1, np.int32), r"uint8"),
    (np.full((20, 28, 28), "a"), r"dtype"),
    (np.where(np.eye(28)[None].repeat(20, 0) > 0, np.nan, 0.5), r"NaN or Inf"),
    (np.full((20, 28, 28), np.inf), r"NaN or Inf"),
    (np.zeros((MIN_SAMPLES - 1, 28, 28)), r"at least 10"),
])
def test_bad_images_raise_one_line_value_errors(images, match):
    with pytest.raises(ValueError, match=match) as e:
        validate_images(images)
    assert "\n" not in str(e.value)


def test_unknown_reference_is_refused_before_any_work():
    with pytest.raises(ValueError, match="unknown reference 'cifar'") as e:
        sample_metrics(_digits(), reference="cifar")
    assert "\n" not in str(e.value)


def test_npz_loading_and_its_errors(tmp_path):
    u8 = _digits(dtype=np.uint8)
    np.savez(tmp_path / "ok.npz", images=u8)
    np.testing.assert_allclose(load_samples_npz(str(tmp_path / "ok.npz")), validate_images(u8))
    np.savez(tmp_path / "noimg.npz", image=u8, label=np.zeros(20))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file\nat all")
    np.save(tmp_path / "plain.npy", u8)
    np.savez(tmp_path / "bad.npz", images=np.full((20, 28, 28), 300, np.int64))
    cases = [("noimg.npz", r"no 'images' array \(found: image, label;"),
             ("junk.npz", "is a text file, not an .npz archive"),
             ("plain.npy", "not an .npz archive"),
             ("missing.npz", "does not exist"),
             ("bad.npz", "uint8")]
    for name, match in cases:
        for fn in (load_samples_npz, score_samples_file):
            with pytest.raises(ValueError, match=match) as e:
                fn(str(tmp_path / name))
            assert "\n" not in str(e.value), name


def test_kid_precomputed_kernels_match_per_subset_computation():
    x, y = _gauss(60, 5, seed=20), _gauss(50, 5, shift=0.2, seed=21)
    fast = M.kernel_distance(x, y, num_subsets=20, subset_size=17, seed=5)
    slow = M.kernel_distance(x, y, num_subsets=20, subset_size=17, seed=5, max_precomputed=0)
    np.testing.assert_allclose(fast, slow, rtol=1e-9)


# ------------------------------------------------------------------ files that are not samples
def _png_bytes():
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _npz_bytes(**arrays):
    import io
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _zip_bytes():
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "hello")
    return buf.getvalue()


@pytest.mark.parametrize("content, match", [
    # numpy reads these as pickles and answers "... pickled (object) data ... allow_pickle=".
    (b"0.1 0.2 0.3\n0.4 0.5 0.6\n", r"is a text file, not an \.npz archive"),
    (_png_bytes(), r"is a PNG image, not an \.npz archive"),
    (__import__("pickle").dumps([1, 2, 3]), r"is a Python pickle, not an \.npz archive"),
    (bytes(range(7, 250)), r"does not start with a zip signature: it is not an \.npz archive"),
    (b"", r"is an empty file, not an \.npz archive"),
    (b"\x93NUMPY\x01\x00", r"is a \.npy array, not an \.npz archive"),
    (_zip_bytes(), r"has no 'images' array \(found: notes\.txt"),
    (_npz_bytes(images=np.array([np.zeros(3), "a"], dtype=object)),
     r"'images' in .* is an array of Python objects \(dtype object\)"),
    (_npz_bytes(images=np.zeros((20, 28, 28, 3), np.uint8)), r"shape \[N, 28, 28\]"),
    (_npz_bytes(images=np.array(["a"] * 20)), r"shape \[N, 28, 28\]"),
    (_npz_bytes(images=np.full((20, 28, 28), "a")), r"dtype must be uint8, bool or float"),
])
def test_cli_eval_says_what_a_bad_samples_file_is_never_allow_pickle(tmp_path, capsys, content,
                                                                     match):
    from jaxgen import cli
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        load_samples_npz(str(path))
    assert "\n" not in str(e.value) and "allow_pickle" not in str(e.value)
    assert cli.main(["eval", "--samples", str(path)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and "allow_pickle" not in err, err
    assert lines[0].startswith("jaxgen eval: error: ")


def test_a_directory_is_not_a_samples_file(tmp_path):
    with pytest.raises(ValueError, match=r"is a directory, not an \.npz archive"):
        load_samples_npz(str(tmp_path))


# --------------------------------------------------------------------- class-balanced subsets
def test_class_balanced_indices():
    labels = np.repeat(np.arange(10), 400)  # sorted by class, as the embedded MNIST
    idx = class_balanced_indices(labels, 1000)
    np.testing.assert_array_equal(idx, np.arange(0, 4000, 4))  # every 4th: 100 per class
    counts = np.bincount(labels[class_balanced_indices(labels, 503)], minlength=10)
    assert counts.tolist() == [51, 51, 51, 50, 50, 50, 50, 50, 50, 50]
    a, b = (class_balanced_indices(labels, 500, seed=s) for s in (1, 1))
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 500 and np.bincount(labels[a]).tolist() == [50] * 10
    assert not np.array_equal(a, class_balanced_indices(labels, 500, seed=2))
    assert class_balanced_indices(labels, 4000).tolist() == list(range(4000))
    shuffled = np.random.default_rng(0).permutation(labels)
    assert np.bincount(shuffled[class_balanced_indices(shuffled, 30)]).tolist() == [3] * 10
    # A class smaller than its share is taken whole (the total then falls short).
    uneven = np.array([0] * 2 + [1] * 10)
    assert np.bincount(uneven[class_balanced_indices(uneven, 8)]).tolist() == [2, 4]
    with pytest.raises(ValueError, match="cannot pick 4001 of 4000"):
        class_balanced_indices(labels, 4001)
