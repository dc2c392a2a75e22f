"""The top layer: every ``nla`` subcommand and what only the command line needs.

``cli`` is the entry point (``nla``/``python -m nla``) and the subcommand registry; ``fit`` the
LightningCLI behind fit/validate/test/predict, with the ``preflight`` checks, ``resume`` and the
``progress_bar``; ``config_errors`` turns parser errors into one line. One module or package per
subcommand: ``cache``, ``export``, ``explain/``, ``evaluate``, ``steer/``, ``plan/``, ``audit/``,
``quickstart`` (with ``quickstart_report``), ``import_reference``, ``inspect_model``.
"""
