"""``nla explain``: a text's activations explained token by token with a trained pair.

``command`` runs the pair (and is the subcommand), ``table`` prints the plain-text table, ``page``
writes the self-contained explorer (``--html``), ``flags`` checks an explanation's claim about the
final token against the real token.
"""
