"""zoo: model zoos across loss-landscape phases, published as weight-space datasets."""

__version__ = "0.1.0"
