"""The input side of the activation cache: corpora, tokenization, positions, splits and teacher summaries."""
