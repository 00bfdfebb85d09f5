"""liquidgen: train small attention-free liquid (CfC) image generators on cached VAE latents."""

__version__ = "0.1.0"
