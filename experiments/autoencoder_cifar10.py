"""A KL-regularised autoencoder on CIFAR-10 (prepared TFDS data, an accelerator): 32x32x3
images into an 8x8x4 latent (f = 4, 12x fewer numbers), the first stage of ``ldm_cifar10``:
Rombach et al. 2022's f=4 KL autoencoder (Table 8) at CIFAR's size, without its perceptual and
adversarial terms (l1 reconstruction, as the MNIST recipe measured better than l2).

Not trained by the project: this machine has neither the data nor an accelerator. Its programs
compile for TPU here (``jaxgen compile autoencoder_cifar10:tpu --topology v5e:2x2``).

Variants:
  default, tpu, gpu  128/256/256 channels, attention in the middle, bfloat16 compute, batch 256.
  smoke              a tiny model (what tests compile, and ldm_cifar10:smoke's latent).

  tfds build cifar10 --data_dir ~/tensorflow_datasets      # needs pip install jaxgen[prepare]
  jaxgen train autoencoder_cifar10:tpu --set data.data_dir=~/tensorflow_datasets \\
      --workdir workdirs/autoencoder_cifar10
  jaxgen eval --workdir workdirs/autoencoder_cifar10       # the latent statistics ldm_cifar10 uses
"""
import dataclasses

from jaxgen.config import ImageData, TrainConfig
from jaxgen.models.autoencoder.settings import AutoencoderExperiment, AutoencoderModel
from jaxgen.train.optim import OptimConfig

VARIANTS = ("default", "tpu", "gpu", "smoke")

# What the default variant changes from the library's defaults (AutoencoderExperiment()), and why.
WHY = {
    "data.source": "CIFAR-10 from prepared TFDS data",
    "data.name": "CIFAR-10 from prepared TFDS data",
    "data.batch_size": "256 images per step on an accelerator",
    "model.block_channels": "128/256/256: LDM's f=4 autoencoder widths, at 32x32",
    "model.norm_groups": "32 groups, as LDM and diffusers",
    "model.reconstruction": "l1 measured sharper than l2 on autoencoder_mnist",
    "model.dtype": "bfloat16 compute on accelerators",
    "optim.lr": "a rate for batch 256",
    "optim.warmup_steps": "a warm-up for the larger model",
    "train.steps": "100k steps of batch 256: about 500 epochs",
    "train.log_every": "a line every 500 steps",
    "train.eval_every": "an evaluation every 10k steps",
    "train.ckpt_every": "a checkpoint every 5k steps",
}


def get_config(variant: str = "default") -> AutoencoderExperiment:
    if variant not in VARIANTS:
        raise ValueError(f"unknown autoencoder_cifar10 variant {variant!r}; variants: "
                         f"{', '.join(VARIANTS)}")
    c = AutoencoderExperiment(
        data=ImageData(source="tfds", name="cifar10", batch_size=256),
        model=AutoencoderModel(block_channels=(128, 256, 256), norm_groups=32,
                               reconstruction="l1", dtype="bfloat16"),
        optim=OptimConfig(lr=2e-4, warmup_steps=1000),
        train=TrainConfig(steps=100_000, log_every=500, eval_every=10_000, ckpt_every=5000),
    )
    if variant == "smoke":
        c = dataclasses.replace(
            c, data=dataclasses.replace(c.data, batch_size=8),
            model=dataclasses.replace(c.model, block_channels=(16, 16, 32), norm_groups=8),
            train=dataclasses.replace(c.train, steps=4, log_every=2, num_samples=8))
    return c
