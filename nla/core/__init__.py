"""The bottom layer: what every other package may import and which imports no other ``nla`` package.

Pure maths (``maths``, ``metrics``), user errors (``errors``), files written atomically under the
umask (``files``), finiteness checks (``finite``), and the text formats every model shares: padding
(``padding``), the marker token (``marker``) and the prompts (``prompts``).
"""
