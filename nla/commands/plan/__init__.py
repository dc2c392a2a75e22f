"""``nla plan``: will a config fit its GPUs, and how long will a step take -- before any download.

``architectures`` reads model configs without weights (a local directory, the hub, or a built-in
table), ``shapes`` counts parameters on the meta device, ``settings`` reads a config file, ``memory``
holds the memory model as pure functions, ``estimate`` combines them, ``command`` prints the plan and
the cheapest fixes.
"""
