"""LAPA: latent action pretraining from videos, and the tools that run it on a Franka."""

__version__ = "0.1.0"
