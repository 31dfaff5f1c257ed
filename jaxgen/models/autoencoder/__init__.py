"""The autoencoder family: a KL-regularised convolutional autoencoder (the first stage of latent
diffusion, Rombach et al. 2022), trained and evaluated on jaxgen's stack."""
