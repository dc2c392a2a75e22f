"""Natural Language Autoencoders: explain a language model's activations in English, and measure it."""

__version__ = "0.1.0.dev0"
