"""The liquid backbone network. Knows nothing of files."""
