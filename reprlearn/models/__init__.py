"""Model builders: embedding towers, two towers for two views, the Siamese pair model, learned verifiers,
autoencoders and the VAE."""

from reprlearn.models.autoencoders import AutoencoderParts, conv_autoencoder, dense_autoencoder
from reprlearn.models.joint import joint_embedding_model, project_joint_embedding
from reprlearn.models.siamese import siamese_pair_model
from reprlearn.models.towers import backbone_tower, build_tower, conv_tower, initialise_from, mlp_tower
from reprlearn.models.two_tower import build_two_towers, towers_of, two_tower_model
from reprlearn.models.vae import VAE
from reprlearn.models.verifiers import VERIFIERS, build_verifier, siamese_head_model, two_channel_model

__all__ = ["AutoencoderParts", "VAE", "VERIFIERS", "backbone_tower", "build_tower", "build_two_towers",
           "build_verifier", "conv_autoencoder", "conv_tower", "dense_autoencoder", "initialise_from",
           "joint_embedding_model", "mlp_tower", "project_joint_embedding", "siamese_head_model", "siamese_pair_model",
           "towers_of", "two_channel_model", "two_tower_model"]
