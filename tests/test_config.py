"""Settings: recipes, --set overrides, descriptions, library defaults equal to the recipes',
optimizer schedules and mesh rules."""
import dataclasses
import json

import numpy as np
import pytest

from jaxgen import experiments, settings
from jaxgen.errors import UsageError
from jaxgen.train import mesh as mesh_lib
from jaxgen.train.optim import OptimConfig, make_optimizer, make_schedule

RECIPE = '''
import dataclasses
from typing import Literal
from jaxgen.config import Experiment, TrainConfig, field

@dataclasses.dataclass(frozen=True)
class Model:
    """Attributes:
      width: the width.
      act: the activation.
      dims: some dims.
    """
    width: int = 64
    act: Literal["relu", "gelu"] = "relu"
    dims: tuple[int, ...] = (1, 2)

@dataclasses.dataclass(frozen=True)
class MyExperiment(Experiment):
    family: str = "toy:ToyFamily"
    model: Model = field(Model)

VARIANTS = ("default", "small")
def get_config(variant="default"):
    return MyExperiment(model=Model(width=8 if variant == "small" else 64),
                        train=TrainConfig(ema_decay=0.0))
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


def test_overrides_are_typed_and_leave_the_original_alone(recipe_dir):
    c = experiments.get_config("myexp")
    d = experiments.apply_overrides(c, ["model.width=32", "optim.lr=3e-4", "model.act=gelu",
                                        "train.async_ckpt=false", "model.dims=(3, 4)",
                                        "optim.lr=1"])
    assert (d.model.width, d.model.act, d.train.async_ckpt, d.model.dims) == (32, "gelu", False, (3, 4))
    assert d.optim.lr == 1.0 and isinstance(d.optim.lr, float)
    assert c.model.width == 64 and c.optim.lr == 1e-3  # frozen: a new object
    assert hash(d) != hash(c)


@pytest.mark.parametrize("item, message", [
    ("model.widht=3", "unknown config key \\(did you mean 'model.width'\\?\\)"),
    ("nonsense=1", "unknown config key"),
    ("model.width=abc", "expected a value of type int"),
    ("model.width=1.5", "expected a value of type int"),
    ("train.async_ckpt=maybe", "expected a value of type bool"),
    ("model.act=gleu", "expected one of relu, gelu \\(did you mean 'gelu'\\?\\)"),
    ("optim.lr=-1", "optim.lr and optim.adam_lr must be positive"),
    ("model", "expected key=value"),
    ("model=3", "a group of settings"),
])
def test_bad_overrides_are_one_line_usage_errors(recipe_dir, item, message):
    with pytest.raises(UsageError, match=message) as info:
        experiments.apply_overrides(experiments.get_config("myexp"), [item])
    assert "\n" not in str(info.value)


def test_a_config_round_trips_through_json_exactly():
    for spec in ("diffusion_mnist", "diffusion_mnist:edm", "gan_mnist:conditional",
                 "lm_shakespeare_char:gpu", "vae_mnist:baseline", "diffusion_cifar10"):
        c = experiments.get_config(spec)
        back = experiments.from_dict(json.loads(json.dumps(settings.to_dict(c))))
        assert back == c and type(back) is type(c)


def test_a_workdir_config_with_a_bad_value_is_refused_naming_the_key():
    d = settings.to_dict(experiments.get_config("diffusion_mnist"))
    d["diffusion"]["parameterization"] = "score"
    with pytest.raises(UsageError, match="diffusion.parameterization: Input should be"):
        experiments.from_dict(d)
    d = settings.to_dict(experiments.get_config("diffusion_mnist"))
    d["model"]["block_chanels"] = [1]
    with pytest.raises(UsageError, match="unknown setting model.block_chanels \\(did you mean "
                                         "model.block_channels\\?\\)"):
        experiments.from_dict(d)


RECIPES = ("vae_mnist", "gan_mnist", "diffusion_mnist", "lm_shakespeare_char",
           "autoencoder_mnist", "ldm_mnist", "autoencoder_cifar10", "ldm_cifar10")


@pytest.mark.parametrize("name", RECIPES)
def test_library_defaults_equal_the_recipe_defaults_unless_the_recipe_says_why(name):
    """``FamilyExperiment()`` in Python and ``jaxgen config RECIPE`` give the same defaults:
    every setting the recipe's default variant changes is named, with a reason, in its WHY."""
    from jaxgen.models import family_class

    recipe = experiments.get_config(name)
    library = family_class(recipe.family).settings()
    ours = {k: v for k, v, _ in settings.flat_items(recipe)}
    theirs = {k: v for k, v, _ in settings.flat_items(library)}
    changed = {k for k in ours if ours[k] != theirs[k] and k != "experiment"}
    why = experiments.recipe_reasons(name)
    assert changed == set(why), (f"changed without a reason: {sorted(changed - set(why))}; "
                                 f"reasons for unchanged keys: {sorted(set(why) - changed)}")
    assert all(len(text) > 10 for text in why.values())


def test_diffusion_library_defaults_sample_as_the_cli_does():
    from jaxgen.models.diffusion import DiffusionConfig
    from jaxgen.models.diffusion.settings import DiffusionExperiment, DiffusionSample

    cli = experiments.get_config("diffusion_mnist")
    assert DiffusionConfig() == cli.diffusion
    assert DiffusionSample() == cli.sample == DiffusionExperiment().sample
    assert DiffusionConfig().clip_x0 and DiffusionConfig().sample_sigma_max == 80.0


def test_every_setting_of_every_recipe_has_a_description():
    missing = []
    for name in RECIPES:
        for key, _, info in settings.flat_items(experiments.get_config(name)):
            if not info.doc:
                missing.append(f"{name}: {key}")
    assert not missing, missing


def test_settings_update_takes_values_and_checks_keys():
    c = experiments.get_config("vae_mnist:smoke")
    d = settings.update(c, {"train.steps": 7, "model.hidden": (8, 4)})
    assert d.train.steps == 7 and d.model.hidden == (8, 4)
    with pytest.raises(UsageError, match="did you mean 'train.steps'"):
        settings.update(c, {"train.stesp": 7})


def test_warmup_cosine_schedule_values():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, end_lr_factor=0.1)
    s = make_schedule(cfg, 110)
    assert float(s(0)) == 0.0
    assert np.isclose(float(s(5)), 5e-4)
    assert np.isclose(float(s(10)), 1e-3)
    # Half-way through the cosine: (peak + end) / 2.
    assert np.isclose(float(s(60)), (1e-3 + 1e-4) / 2, rtol=1e-5)
    assert np.isclose(float(s(110)), 1e-4)
    assert np.isclose(float(make_schedule(OptimConfig(lr=2e-3, schedule="constant"), 10)(77)),
                      2e-3)
    with pytest.raises(UsageError, match="schedule: Input should be 'cosine' or 'constant'"):
        settings.replace(OptimConfig(), schedule="linear")


def test_clipping_and_weight_decay_mask():
    import jax.numpy as jnp
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    grads = {"w": jnp.full((2, 2), 100.0), "b": jnp.zeros((2,))}
    tx = make_optimizer(OptimConfig(name="adamw", lr=0.1, schedule="constant", clip_norm=1.0,
                                    weight_decay=0.5), 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    # Bias has zero gradient and no weight decay: no update. Kernel: decayed and moved.
    assert np.allclose(updates["b"], 0.0)
    assert np.all(np.asarray(updates["w"]) < -0.1)
    with pytest.raises(ValueError, match="must be positive"):
        OptimConfig(lr=-1.0)


def test_mesh_shapes_and_fsdp_rule():
    assert mesh_lib.mesh_shape(mesh_lib.MeshConfig(-1, 2, 1), 8) == (4, 2, 1)
    with pytest.raises(ValueError, match="do not split"):
        mesh_lib.mesh_shape(mesh_lib.MeshConfig(-1, 3, 1), 8)
    with pytest.raises(ValueError, match="needs 4 devices, but 8 are available"):
        mesh_lib.mesh_shape(mesh_lib.MeshConfig(2, 2, 1), 8)
    with pytest.raises(ValueError, match="at most one of them -1"):
        mesh_lib.MeshConfig(-1, -1, 1)
    assert mesh_lib.fsdp_spec((784, 500), 4) == mesh_lib.P("fsdp", None)
    assert mesh_lib.fsdp_spec((500, 784), 8) == mesh_lib.P(None, "fsdp")  # 500 % 8 != 0
    assert mesh_lib.fsdp_spec((10,), 8) == mesh_lib.P()  # small: replicated
    assert mesh_lib.fsdp_spec((784, 500), 1) == mesh_lib.P()


def test_jaxgen_config_prints_descriptions_choices_and_the_recipes_reasons(capsys):
    from jaxgen import cli

    assert cli.main(["config", "diffusion_mnist"]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(x for x in out if x.startswith("diffusion.parameterization"))
    assert '"v"' in line and "[one of: eps, v, x0, edm]" in line
    line = next(x for x in out if x.startswith("model.block_channels"))
    assert "(16, 32, 64)" in line and "[the recipe:" in line
    assert cli.main(["config", "diffusion_mnist", "--short", "--set", "model.dtype=bfloat16"]) == 0
    short = capsys.readouterr().out.splitlines()
    assert any(x.split()[:3] == ["model.dtype", "str", '"bfloat16"'] for x in short)
    assert all("#" not in x for x in short)
    # every line's key=value goes back in through --set
    texts = [f"{x.split()[0]}={' '.join(x.split()[2:])}" for x in short if x.split()[0] != "family"]
    assert experiments.apply_overrides(experiments.get_config("diffusion_mnist"), texts) == \
        dataclasses.replace(experiments.get_config("diffusion_mnist"),
                            model=dataclasses.replace(experiments.get_config("diffusion_mnist").model,
                                                      dtype="bfloat16"))
