"""The shipped LeNet feature network and sample_metrics on the embedded MNIST.

Nothing here trains the network except test_retrain_command_is_deterministic (one epoch): every
other test uses the weights that ship with the package.
"""
import hashlib
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import scipy.ndimage

import jaxgen.eval as ev
from jaxgen.eval import feature_net, lenet_weights, quality
from envs import host_env

# The SHA-256 of jaxgen/eval/weights/lenet_mnist_embedded_v1.msgpack. Pinned here, apart from the
# code's own record, so that new weights are a deliberate change: every fd_lenet figure moves.
PINNED_SHA256 = "0127443d6ad243cd4d00b085a57be095e18c4ba87b8aba78fadf52b514401e4b"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def net():
    quality.clear_caches()
    return ev.load_feature_net("mnist_embedded")


@pytest.fixture(scope="session")
def mnist():
    return feature_net.load_dataset("mnist_embedded")


@pytest.fixture(scope="session")
def test_digits_metrics(net, mnist):
    return ev.sample_metrics(mnist[2])


# ------------------------------------------------------------------------------ shipped weights
def test_shipped_weights_checksum_and_accuracy_are_pinned(net):
    path = lenet_weights.shipped_path("mnist_embedded")
    assert path.parent.name == "weights" and path.parent.parent.name == "eval"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PINNED_SHA256
    assert lenet_weights.SHIPPED["mnist_embedded"].sha256 == PINNED_SHA256 == net.sha256
    # Recomputed from the weights, not read from the file's record.
    acc = feature_net.test_accuracy(net.params)
    print(f"shipped feature net: test accuracy {acc:.4f}, sha256 {net.sha256}")
    assert acc >= 0.985 and feature_net.MIN_TEST_ACCURACY == 0.985
    assert acc == net.test_accuracy == lenet_weights.SHIPPED["mnist_embedded"].test_accuracy
    assert path.stat().st_size < 1_000_000


def _altered_copy(tmp_path, monkeypatch):
    """Points the shipped record at a copy of the weights with one parameter byte changed."""
    blob = bytearray(lenet_weights.shipped_path().read_bytes())
    blob[-5] ^= 0x01  # the last parameter array's bytes: the file still parses
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.msgpack").write_bytes(bytes(blob))
    monkeypatch.setattr(lenet_weights, "shipped_path", lambda dataset="mnist_embedded":
                        tmp_path / "weights" / "w.msgpack")
    monkeypatch.setattr(lenet_weights, "_LOADED", {})
    monkeypatch.setattr(quality, "_REF", {})
    monkeypatch.setattr(quality, "_FLOOR", {})

    def no_training(*a, **k):
        raise AssertionError("altered weights must never be replaced by a retraining")

    monkeypatch.setattr(feature_net, "train_feature_net", no_training)
    monkeypatch.setattr(lenet_weights, "train_feature_net", no_training)
    return tmp_path / "weights" / "w.msgpack"


def test_altered_weights_are_a_one_line_error_never_a_retrain(tmp_path, monkeypatch, capsys):
    path = _altered_copy(tmp_path, monkeypatch)
    with pytest.raises(ev.WeightsError, match=r"SHA-256 [0-9a-f]{16}\.\.\., not the recorded "
                       r"0127443d6ad243cd\.\.\..*reinstall jaxgen") as e:
        ev.load_feature_net()
    assert "\n" not in str(e.value)
    # The same through the CLI: one line, exit 1 (not a usage error), and no JSON.
    from jaxgen import cli
    digits = np.zeros((20, 28, 28), np.uint8)
    np.savez(tmp_path / "s.npz", images=digits)
    assert cli.main(["eval", "--samples", str(tmp_path / "s.npz")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "SHA-256" in err
    path.unlink()
    with pytest.raises(ev.WeightsError, match="cannot read the feature network's weights"):
        ev.load_feature_net()


def test_weights_files_of_another_kind_are_refused(net, tmp_path):
    p = tmp_path / "w.msgpack"
    cases = {
        "not a jaxgen feature-network weights file": b"\x93NUMPY garbage",
        "holds version 1 for 'cifar10'": lenet_weights.weights_bytes(net.params, "cifar10", 0.9),
        "do not fit the LeNet": lenet_weights.weights_bytes(
            {"head": net.params["head"]}, "mnist_embedded", 0.9),
    }
    for match, blob in cases.items():
        p.write_bytes(blob)
        with pytest.raises(ev.WeightsError, match=match) as e:
            lenet_weights.load_weights(p)
        assert "\n" not in str(e.value)
    # An unaltered file round-trips: same bytes, same checksum, same parameters.
    p.write_bytes(lenet_weights.weights_bytes(net.params, "mnist_embedded", net.test_accuracy))
    again = lenet_weights.load_weights(p, PINNED_SHA256)
    jax.tree.map(np.testing.assert_array_equal, again.params, net.params)


# ------------------------------------------------------------------------- one yardstick: devices
def fixed_samples_summary():
    """fd_lenet and friends of a fixed set: 600 real training digits, each shifted one pixel
    right (class-balanced, seed 7), scoring well above the floor. Run here and in a subprocess."""
    x_tr, y_tr, _, _ = feature_net.load_dataset("mnist_embedded")
    samples = np.roll(x_tr[ev.class_balanced_indices(y_tr, 600, seed=7)], 1, axis=2)
    m = ev.sample_metrics(samples)
    feats, _ = ev.load_feature_net().apply(samples)
    return {"devices": jax.device_count(), "fd_lenet": m["fd_lenet"],
            "floor_fd_lenet": m["floor"]["fd_lenet"], "precision": m["precision"],
            "features_sha256": hashlib.sha256(feats.tobytes()).hexdigest()}


def test_fd_lenet_is_the_same_on_1_and_8_devices_and_from_an_empty_cache(net, tmp_path):
    cache = tmp_path / "empty_cache"
    cache.mkdir()
    # one device, and the session's other XLA flags: the features are compared bit for bit
    env = host_env("JAX_NUM_CPU_DEVICES", JAX_PLATFORMS="cpu", JAXGEN_CACHE=str(cache))
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1"
    code = ("import json, sys; sys.path.insert(0, 'tests'); import test_eval_feature_net as t; "
            "print(json.dumps(t.fixed_samples_summary()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads(r.stdout.strip().splitlines()[-1])

    # In this process: 8 devices, and an explicit 8-device mesh active around the evaluation.
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    with jax.set_mesh(mesh):
        eight = fixed_samples_summary()
    print(f"\n1 device:  {one}\n8 devices: {eight}")
    assert one["devices"] == 1 and eight["devices"] == 8
    for key in ("fd_lenet", "floor_fd_lenet", "precision"):
        assert f"{one[key]:.4g}" == f"{eight[key]:.4g}", key  # 4 significant digits
        np.testing.assert_allclose(one[key], eight[key], rtol=1e-6)
    assert one["features_sha256"] == eight["features_sha256"]  # in fact bitwise equal
    assert 2 * eight["floor_fd_lenet"] < eight["fd_lenet"]  # the fixed set is no trivial one
    assert list(cache.iterdir()) == []  # nothing trained or cached on first use


def test_features_do_not_depend_on_batch_size(net, mnist):
    x = mnist[2][:333]
    f_default, lg_default = net.apply(x)
    assert f_default.shape == (333, 128) and lg_default.shape == (333, 10)
    for bs in (7, 64, 500):
        f, lg = net.apply(x, batch_size=bs)
        np.testing.assert_allclose(f, f_default, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(lg, lg_default, rtol=1e-5, atol=1e-5)
    # With the fixed batch, a row's features do not depend on the rows around it.
    np.testing.assert_array_equal(net.apply(x[100:117])[0], f_default[100:117])
    assert feature_net.extraction_device().platform == "cpu"


def test_retrain_command_is_deterministic_and_loadable(tmp_path, capsys, monkeypatch):
    # The documented reproduction path at a tiny size (1 epoch): twice the same bytes, the
    # printed checksum is the file's, and the file loads as a network.
    lines = []
    for name in ("a.msgpack", "b.msgpack"):
        argv = ["--retrain", str(tmp_path / name), "--epochs", "1", "--min-accuracy", "0"]
        assert lenet_weights.main(argv) == 0
        lines.append(capsys.readouterr().out.strip())
    a, b = ((tmp_path / n).read_bytes() for n in ("a.msgpack", "b.msgpack"))
    assert a == b
    digest = hashlib.sha256(a).hexdigest()
    assert f"sha256 {digest}" in lines[0] and "differs from the shipped weights" in lines[0]
    acc = float(lines[0].split("test accuracy ")[1].split()[0])
    loaded = lenet_weights.load_weights(tmp_path / "a.msgpack", digest)
    assert abs(loaded.test_accuracy - acc) < 1e-4 and 0.5 < acc < 0.985
    # Below the bar nothing is written (an untrained network stands in for a bad training).
    untrained = feature_net.LeNet().init(jax.random.key(0), np.zeros((1, 28, 28, 1)))["params"]
    monkeypatch.setattr(lenet_weights, "train_feature_net", lambda *a, **k: untrained)
    assert lenet_weights.main(["--retrain", str(tmp_path / "c.msgpack")]) == 1
    assert "below the required 0.985; nothing written" in capsys.readouterr().err
    assert not (tmp_path / "c.msgpack").exists()


# ------------------------------------------------------------------------------- sample metrics
def test_result_keys_and_reference_scores_itself_perfectly(test_digits_metrics):
    m = test_digits_metrics
    assert set(m) == {"fd_lenet", "kid_lenet", "kid_lenet_std", "precision", "recall",
                      "classifier_score", "class_fractions", "num_samples",
                      "feature_net_test_accuracy", "seed", "floor"}
    assert set(m["floor"]) == {*ev.METRIC_KEYS, "num_samples"}
    json.dumps(m)  # plain Python numbers
    assert m["num_samples"] == 1000 == m["floor"]["num_samples"] and m["seed"] == 0
    assert m["fd_lenet"] < 1e-6 and m["precision"] == 1.0 and m["recall"] == 1.0
    np.testing.assert_allclose(m["class_fractions"], 0.1, atol=0.01)
    assert m["feature_net_test_accuracy"] == 0.986


def test_floor_is_computed_at_the_sample_count(net, mnist):
    x_te = mnist[2]
    t0 = time.perf_counter()
    m = ev.sample_metrics(x_te[::5])  # 200 samples
    assert m["num_samples"] == 200 == m["floor"]["num_samples"]
    assert m["floor"] == ev.floor_metrics(num_samples=200)
    f1000 = ev.floor_metrics(num_samples=1000)
    print(f"floor fd_lenet at 200 digits {m['floor']['fd_lenet']:.2f}, at 1,000 "
          f"{f1000['fd_lenet']:.2f} ({time.perf_counter() - t0:.1f} s)")
    # Fewer digits, a larger Frechet bias: the floor at 200 is not the floor at 1,000.
    assert m["floor"]["fd_lenet"] > 1.3 * f1000["fd_lenet"]
    # The floor set is class-balanced: 20 real digits of each class.
    np.testing.assert_allclose(m["floor"]["class_fractions"], 0.1, atol=0.02)
    # Past the 4,000 training digits it uses them all, and says so.
    assert quality.class_balanced_indices(mnist[1], 4000).tolist() == list(range(4000))
    with pytest.raises(ValueError, match="at least 10"):
        ev.floor_metrics(num_samples=9)


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
        print(name, {k: v for k, v in m.items() if k not in ("floor", "class_fractions")},
              "floor fd_lenet", m["floor"]["fd_lenet"], "at", m["floor"]["num_samples"])
        assert m["floor"]["num_samples"] == m["num_samples"]
        assert m["fd_lenet"] > 3 * m["floor"]["fd_lenet"], name
        assert m["kid_lenet"] > m["floor"]["kid_lenet"] + 3 * m["kid_lenet_std"], name
    assert sets["noise"]["floor"] == floor
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
    assert a["num_samples"] == 100 == a["floor"]["num_samples"] and a["seed"] == 1
    for k in ev.METRIC_KEYS:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_cli_eval_samples_prints_the_fixed_keys(net, mnist, tmp_path, capsys):
    from jaxgen import cli
    path = tmp_path / "digits.npz"
    np.savez(path, images=(mnist[2][::2, ..., 0] * 255).astype(np.uint8))  # uint8 [500, 28, 28]
    assert cli.main(["eval", "--samples", str(path), "--out", str(tmp_path / "m.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "m.json").read_text())
    assert set(printed) == {"fd_lenet", "kid_lenet", "kid_lenet_std", "precision", "recall",
                            "classifier_score", "class_fractions", "num_samples",
                            "feature_net_test_accuracy", "seed", "floor"}
    assert printed["num_samples"] == 500 == printed["floor"]["num_samples"]
    assert len(printed["class_fractions"]) == 10
    assert printed["fd_lenet"] < printed["floor"]["fd_lenet"]  # half the reference set itself


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
