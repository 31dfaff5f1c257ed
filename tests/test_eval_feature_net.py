"""The LeNet feature network and sample_metrics on the embedded MNIST.

The network trains once per test session, into a temporary JAXGEN_CACHE.
"""
import json
import os
import time

import jax
import numpy as np
import pytest
import scipy.ndimage

import jaxgen.eval as ev
from jaxgen.eval import feature_net, quality


@pytest.fixture(scope="session")
def net(tmp_path_factory):
    """(network trained in this session, its cache dir); the env var is restored afterwards."""
    cache = tmp_path_factory.mktemp("jaxgen_cache")
    old = os.environ.get("JAXGEN_CACHE")
    os.environ["JAXGEN_CACHE"] = str(cache)
    quality.clear_caches()
    try:
        yield feature_net.load_feature_net("mnist_embedded"), cache
    finally:
        quality.clear_caches()
        if old is None:
            os.environ.pop("JAXGEN_CACHE", None)
        else:
            os.environ["JAXGEN_CACHE"] = old


@pytest.fixture(scope="session")
def mnist():
    return feature_net.load_dataset("mnist_embedded")


@pytest.fixture(scope="session")
def test_digits_metrics(net, mnist):
    return ev.sample_metrics(mnist[2])


def test_trained_net_is_accurate_and_cached(net):
    fnet, cache = net
    print(f"feature net: test accuracy {fnet.test_accuracy:.4f}, trained in {fnet.train_seconds:.1f}s")
    assert fnet.test_accuracy >= feature_net.MIN_TEST_ACCURACY
    assert (cache / f"lenet_mnist_embedded_v{feature_net.NET_VERSION}.msgpack").is_file()


def test_second_load_comes_from_disk_and_matches(net, mnist, monkeypatch):
    fnet, _ = net
    def no_training(*a, **k):
        raise AssertionError("the cached network must not be retrained")
    monkeypatch.setattr(feature_net, "train_feature_net", no_training)
    monkeypatch.setattr(feature_net, "_LOADED", {})
    t0 = time.perf_counter()
    cached = feature_net.load_feature_net("mnist_embedded")
    assert time.perf_counter() - t0 < 5.0
    assert cached is not fnet and cached.test_accuracy == fnet.test_accuracy
    jax.tree.map(np.testing.assert_array_equal, fnet.params, cached.params)
    x = mnist[2][:300]
    np.testing.assert_array_equal(cached.apply(x)[0], fnet.apply(x)[0])


def test_training_is_deterministic(mnist):
    # Same config and seed -> bitwise the same parameters (a short run on 200 digits).
    cfg = feature_net.FeatureNetConfig(epochs=1, batch_size=50, warmup_steps=1)
    x, y = mnist[0][::20], mnist[1][::20]
    p1, p2 = (feature_net.train_feature_net(x, y, cfg) for _ in range(2))
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
    p3 = feature_net.train_feature_net(x, y, feature_net.FeatureNetConfig(
        epochs=1, batch_size=50, warmup_steps=1, seed=1))
    assert not np.array_equal(p1["head"]["kernel"], p3["head"]["kernel"])


def test_features_do_not_depend_on_batch_size(net, mnist):
    fnet, _ = net
    x = mnist[2][:333]
    f_default, lg_default = fnet.apply(x)
    assert f_default.shape == (333, 128) and lg_default.shape == (333, 10)
    for bs in (7, 64, 500):
        f, lg = fnet.apply(x, batch_size=bs)
        np.testing.assert_allclose(f, f_default, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(lg, lg_default, rtol=1e-5, atol=1e-5)
    # With the fixed batch, a row's features do not depend on the rows around it.
    np.testing.assert_array_equal(fnet.apply(x[100:117])[0], f_default[100:117])


def test_result_keys_and_reference_scores_itself_perfectly(test_digits_metrics):
    m = test_digits_metrics
    assert set(m) == {"fd_lenet", "kid_lenet", "kid_lenet_std", "precision", "recall",
                      "classifier_score", "class_fractions", "num_samples",
                      "feature_net_test_accuracy", "seed", "floor"}
    assert set(m["floor"]) == set(ev.METRIC_KEYS)
    json.dumps(m)  # plain Python numbers
    assert m["num_samples"] == 1000 and m["seed"] == 0
    assert m["fd_lenet"] < 1e-6 and m["precision"] == 1.0 and m["recall"] == 1.0
    np.testing.assert_allclose(m["class_fractions"], 0.1, atol=0.01)


def _blur(x, sigma=1.5):
    return np.clip(scipy.ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0)), 0, 1)


def test_degraded_sets_score_worse_than_the_floor(net, mnist, test_digits_metrics):
    x_te, y_te = mnist[2], mnist[3]
    floor = test_digits_metrics["floor"]
    print("floor", {k: v for k, v in floor.items() if k != "class_fractions"})
    assert 0 < floor["fd_lenet"] and floor["precision"] > 0.7 and floor["recall"] > 0.7
    assert floor["classifier_score"] > 9.0 and abs(sum(floor["class_fractions"]) - 1) < 1e-9

    noise = np.random.default_rng(0).uniform(size=(1000, 28, 28, 1)).astype(np.float32)
    half = x_te[y_te < 5]
    sets = {"noise": ev.sample_metrics(noise), "blurred": ev.sample_metrics(_blur(x_te)),
            "half_classes": ev.sample_metrics(half)}
    for name, m in sets.items():
        print(name, {k: v for k, v in m.items() if k not in ("floor", "class_fractions")})
        assert m["floor"] == floor
        assert m["fd_lenet"] > 3 * floor["fd_lenet"], name
        assert m["kid_lenet"] > floor["kid_lenet"] + 3 * m["kid_lenet_std"], name
    assert sets["noise"]["precision"] < 0.2 < floor["precision"]
    assert sets["noise"]["recall"] < floor["recall"]
    assert sets["half_classes"]["recall"] < 0.6 < floor["recall"]
    assert sets["half_classes"]["precision"] > 0.8
    assert sum(sets["half_classes"]["class_fractions"][5:]) < 0.02
    assert sets["half_classes"]["classifier_score"] < 5.5
    assert sets["blurred"]["precision"] < floor["precision"]


def test_score_samples_file_matches_sample_metrics(net, mnist, tmp_path):
    x = mnist[2][::10]  # 100 digits
    u8 = np.round(x * 255).astype(np.uint8)[..., 0]
    np.savez(tmp_path / "s.npz", images=u8)
    a = ev.score_samples_file(str(tmp_path / "s.npz"), seed=1)
    b = ev.sample_metrics(x, seed=1)
    assert a["num_samples"] == 100 and a["seed"] == 1
    for k in ev.METRIC_KEYS:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_cli_eval_samples_prints_the_fixed_keys(net, mnist, tmp_path, capsys):
    from jaxgen import cli
    path = tmp_path / "digits.npz"
    np.savez(path, images=(mnist[2][::2, ..., 0] * 255).astype(np.uint8))  # uint8 [500, 28, 28]
    assert cli.main(["eval", "--samples", str(path), "--out", str(tmp_path / "m.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.load(open(tmp_path / "m.json"))
    assert set(printed) == {"fd_lenet", "kid_lenet", "kid_lenet_std", "precision", "recall",
                            "classifier_score", "class_fractions", "num_samples",
                            "feature_net_test_accuracy", "seed", "floor"}
    assert printed["num_samples"] == 500 and len(printed["class_fractions"]) == 10
    assert printed["fd_lenet"] < 0.5 * printed["floor"]["fd_lenet"] + 10  # half the reference set


@pytest.mark.parametrize("images, message", [
    (np.zeros((20, 32, 32), np.uint8), "shape"),
    (np.full((20, 28, 28), 2.0, np.float32), "[0, 1]"),
    (np.full((20, 28, 28), np.nan, np.float32), "NaN"),
    (np.zeros((20, 28, 28), np.int64), "must be uint8"),
    (np.zeros((3, 28, 28), np.float32), "at least"),
])
def test_cli_eval_samples_bad_input_is_one_line_exit_2(tmp_path, capsys, images, message):
    from jaxgen import cli
    path = tmp_path / "bad.npz"
    np.savez(path, images=images)
    assert cli.main(["eval", "--samples", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
