"""mtl-train: a training CLI for multi-task ranking models in recommender systems."""

__version__ = "0.1.0"
