"""The stages: image sources, encode, (train, sample, decode). Each stage is a function taking a
config dataclass; the CLI only parses arguments and calls it."""
