"""``nla evaluate``: the paper's checks of an NLA pair on held-out data, each its own module.

``round_trip`` (held-out FVE and its controls), ``transforms`` (FVE when the explanation is rewritten
before the AR reads it: the steganography check), ``detail`` (FVE from the first n tokens or
sentences), ``splice`` (loss recovered when the reconstruction replaces the activation inside the
target), ``claims`` (how consistent explanations are across neighbouring positions, and, with a
judge, how often the text supports them). ``bootstrap`` gives every figure a document-level
interval; ``heldout`` gathers the rows, ``report`` and ``svg`` write the results. The subcommand is
``nla.commands.evaluate``; the pair itself runs through ``nla.models.pair.Pair``.
"""
