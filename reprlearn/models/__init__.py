"""Model builders: embedding towers, the Siamese pair model, autoencoders and the VAE."""

from reprlearn.models.autoencoders import AutoencoderParts, conv_autoencoder, dense_autoencoder
from reprlearn.models.joint import joint_embedding_model, project_joint_embedding
from reprlearn.models.siamese import siamese_pair_model
from reprlearn.models.towers import backbone_tower, build_tower, conv_tower, initialise_from, mlp_tower
from reprlearn.models.vae import VAE

__all__ = ["AutoencoderParts", "VAE", "backbone_tower", "build_tower", "conv_autoencoder", "dense_autoencoder",
           "conv_tower", "initialise_from", "joint_embedding_model", "project_joint_embedding", "mlp_tower", "siamese_pair_model"]
