"""Image-quality metrics that need no downloaded weights (issue #6)."""
