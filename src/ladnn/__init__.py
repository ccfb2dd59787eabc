"""LA-DNN continual-learning platform: data versions, training, evaluation, registry and review."""

__version__ = "0.1.0"
