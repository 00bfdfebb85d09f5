"""What every backbone liquidgen trains is: a diffusers model whose one constructor argument,
`spec` (the JSON-able dict a run stores as config.json `model`), is its saved config.

So `save_pretrained` / `from_pretrained` round-trip any family with its weights, and an
exported pipeline holds the trained module itself: there is no second list of config fields
to keep in step with the model's.
"""

from __future__ import annotations

from diffusers import ConfigMixin, ModelMixin


class Backbone(ModelMixin, ConfigMixin):
    """The base of the liquid U-Net, the seed designs and the diffusers baselines.

    Subclasses turn `spec` into their own config (a dataclass that checks itself, kept as
    `self.cfg`: `self.config` is diffusers' saved config) and pass its complete dict here, so
    the saved config lists every field, defaults included. Each family's module imports
    `ModelMixin`: a pipeline loads a component through the base class found in its module.
    """

    def __init__(self, spec: dict):
        super().__init__()
        self.register_to_config(spec=spec)

    @property
    def null_class(self) -> int:
        """The class index that means "no class" (classifier-free guidance)."""
        raise NotImplementedError
