"""Every parameter of every family carries logical axis names, and the same rules shard them all
(jaxgen.nn.partitioning), on any mesh shape."""
import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxgen import experiments
from jaxgen.models import make_family
from jaxgen.nn import partitioning
from jaxgen.train import mesh as mesh_lib

MNIST = {"kind": "image", "shape": (28, 28, 1), "num_classes": 10, "source": "mnist_embedded"}
CIFAR = {"kind": "image", "shape": (32, 32, 3), "num_classes": 10, "source": "tfds"}


class _Tok:
    vocab_size = 65

    def encode(self, s):
        return [1] * len(s)


TEXT = {"kind": "text", "vocab_size": 65, "tokenizer": _Tok(), "seq_len": 64}
SPECS = [("vae_mnist", MNIST), ("vae_mnist:smoke", MNIST), ("gan_mnist", MNIST),
         ("gan_mnist:conditional", MNIST), ("gan_mnist:hinge_sn", MNIST), ("gan_cifar10", CIFAR),
         ("diffusion_mnist", MNIST), ("diffusion_mnist:dit", MNIST), ("diffusion_cifar10", CIFAR),
         ("lm_shakespeare_char:cpu", TEXT), ("lm_shakespeare_char:gpu", TEXT)]


def _family(spec, info, *overrides):
    config = experiments.apply_overrides(experiments.get_config(spec), list(overrides))
    return make_family(config, info)


@pytest.mark.parametrize("spec, info", SPECS, ids=[s for s, _ in SPECS])
def test_every_parameter_has_logical_axis_names(spec, info):
    family = _family(spec, info)
    boxed = jax.eval_shape(family.init_params, jax.random.PRNGKey(0))
    assert partitioning.unboxed_without_axes(boxed) == []
    # the names have one entry per dimension
    for box in jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names")):
        assert len(box.names) == box.value.ndim


def test_rules_shard_every_family_on_one_mesh_with_fsdp_and_tensor():
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2))
    for spec, info in SPECS:
        family = _family(spec, info)
        specs = family.param_specs(None, mesh)
        flat = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
        assert any("fsdp" in tuple(s) for s in flat), spec  # parameters are FSDP-sharded
    lm = _family("lm_shakespeare_char:cpu", TEXT, "model.scan_layers=true")
    specs = lm.param_specs(None, mesh)["layers"]
    assert specs["attn"]["q"]["kernel"] == P(None, "fsdp", "tensor", None)
    assert specs["mlp"]["wi"]["kernel"] == P(None, "fsdp", None, "tensor")
    unet = _family("diffusion_mnist", MNIST).param_specs(None, mesh)
    assert unet["down0_res0"]["conv1"]["kernel"] == P(None, None, None, "fsdp")
    assert unet["mid_attn"]["attn"]["qkv"]["kernel"] == P("fsdp", None, "tensor", None)


@pytest.mark.parametrize("sizes", [dict(data=8), dict(data=1, fsdp=8), dict(data=-1, tensor=4)])
def test_a_mesh_axis_that_does_not_divide_a_dimension_is_dropped_for_it(sizes):
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(**sizes))
    family = _family("gan_mnist:smoke", MNIST)  # widths 4, 8, 16: many do not divide 8
    boxed = jax.eval_shape(family.init_params, jax.random.PRNGKey(0))
    specs = partitioning.mesh_specs(boxed, mesh)
    import flax.linen as nn
    for spec, x in zip(jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P)),
                       jax.tree.leaves(nn.meta.unbox(boxed))):
        for dim, axis in zip(x.shape, tuple(spec)):
            if axis is not None:
                assert dim % mesh.shape[axis] == 0


def test_rules_without_an_axis_replicate_what_it_sharded_and_keep_the_rest():
    rules = dict(partitioning.rules_without("fsdp"))
    assert rules["embed"] is None and rules["conv_out"] is None  # FSDP's axes: replicated
    assert rules["activation_batch"] == "data"  # ("data", "fsdp") keeps its other axis
    assert rules["mlp"] == "tensor" and rules["heads"] == "tensor"  # untouched
    assert len(rules) == len(partitioning.RULES)
    assert dict(partitioning.rules_without("data"))["activation_batch"] == "fsdp"
    assert dict(partitioning.rules_without("tensor"))["mlp"] is None
