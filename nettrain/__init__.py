"""nettrain: declarative, config-driven training of convolutional and recurrent networks in NumPy."""

__version__ = "0.1.0"
