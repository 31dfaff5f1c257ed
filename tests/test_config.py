"""Recipes, --set overrides, optimizer schedules and mesh rules."""
import numpy as np
import optax
import pytest

from jaxgen import experiments
from jaxgen.train import mesh as mesh_lib
from jaxgen.train.optim import OptimConfig, make_optimizer, make_schedule

RECIPE = '''
from jaxgen.config import base_config
VARIANTS = ("default", "small")
def get_config(variant="default"):
    c = base_config()
    c.family = "toy"
    c.model.width = 8 if variant == "small" else 64
    c.model.act = "relu"
    c.model.dims = (1, 2)
    c.train.ema_decay = 0.0
    return c
'''


@pytest.fixture
def recipe_dir(tmp_path, monkeypatch):
    (tmp_path / "myexp.py").write_text(RECIPE)
    monkeypatch.setenv("JAXGEN_EXPERIMENTS", str(tmp_path))
    return tmp_path


def test_recipe_variants(recipe_dir):
    assert experiments.get_config("myexp").model.width == 64
    small = experiments.get_config("myexp:small")
    assert small.model.width == 8 and small.experiment == "myexp:small"
    with pytest.raises(ValueError, match="no variant 'big'; variants: default, small"):
        experiments.get_config("myexp:big")
    with pytest.raises(ValueError, match="unknown experiment 'myexq' \\(did you mean 'myexp'\\?\\)"):
        experiments.get_config("myexq")


def test_overrides_are_typed(recipe_dir):
    c = experiments.get_config("myexp")
    experiments.apply_overrides(c, ["model.width=32", "optim.lr=3e-4", "model.act=gelu",
                                    "train.async_ckpt=false", "model.dims=(3, 4)", "optim.lr=1"])
    assert (c.model.width, c.model.act, c.train.async_ckpt, c.model.dims) == (32, "gelu", False, (3, 4))
    assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)


@pytest.mark.parametrize("item, message", [
    ("model.widht=3", "unknown config key \\(did you mean 'model.width'\\?\\)"),
    ("nonsense=1", "unknown config key"),
    ("model.width=abc", "expected a value of type int"),
    ("model.width=1.5", "expected a value of type int"),
    ("train.async_ckpt=maybe", "expected a value of type bool"),
    ("model.width", "expected key=value"),
])
def test_bad_overrides(recipe_dir, item, message):
    with pytest.raises(ValueError, match=message):
        experiments.apply_overrides(experiments.get_config("myexp"), [item])


def test_warmup_cosine_schedule_values():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, total_steps=110, end_lr_factor=0.1)
    s = make_schedule(cfg)
    assert float(s(0)) == 0.0
    assert np.isclose(float(s(5)), 5e-4)
    assert np.isclose(float(s(10)), 1e-3)
    # Half-way through the cosine: (peak + end) / 2.
    assert np.isclose(float(s(60)), (1e-3 + 1e-4) / 2, rtol=1e-5)
    assert np.isclose(float(s(110)), 1e-4)
    assert np.isclose(float(make_schedule(OptimConfig(lr=2e-3, schedule="constant"))(77)), 2e-3)
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        make_schedule(OptimConfig(schedule="linear"))


def test_clipping_and_weight_decay_mask():
    import jax.numpy as jnp
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    grads = {"w": jnp.full((2, 2), 100.0), "b": jnp.zeros((2,))}
    tx = make_optimizer(OptimConfig(name="adamw", lr=0.1, schedule="constant", clip_norm=1.0,
                                    weight_decay=0.5))
    updates, _ = tx.update(grads, tx.init(params), params)
    # Bias has zero gradient and no weight decay: no update. Kernel: decayed and moved.
    assert np.allclose(updates["b"], 0.0)
    assert np.all(np.asarray(updates["w"]) < -0.1)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(OptimConfig(name="sgdd"))


def test_mesh_shapes_and_fsdp_rule():
    assert mesh_lib.mesh_shape(mesh_lib.MeshConfig(-1, 2, 1), 8) == (4, 2, 1)
    with pytest.raises(ValueError, match="do not split"):
        mesh_lib.mesh_shape(mesh_lib.MeshConfig(-1, 3, 1), 8)
    with pytest.raises(ValueError, match="needs 4 devices, but 8 are available"):
        mesh_lib.mesh_shape(mesh_lib.MeshConfig(2, 2, 1), 8)
    assert mesh_lib.fsdp_spec((784, 500), 4) == mesh_lib.P("fsdp", None)
    assert mesh_lib.fsdp_spec((500, 784), 8) == mesh_lib.P(None, "fsdp")  # 500 % 8 != 0
    assert mesh_lib.fsdp_spec((10,), 8) == mesh_lib.P()  # small: replicated
    assert mesh_lib.fsdp_spec((784, 500), 1) == mesh_lib.P()
