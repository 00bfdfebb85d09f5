"""Custom pipeline entry for diffusers; needs `pip install liquidgen`."""
from liquidgen.pipeline.export import LiquidGenPipeline  # noqa: F401
