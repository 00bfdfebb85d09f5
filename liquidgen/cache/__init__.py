"""The latent cache store: manifest schema, Zarr and WebDataset shards, verify. Knows nothing of
models, so a cache can be read, checked and shared without torch models or VAEs."""
