"""``nla audit``: a pair run over a whole dataset, into a table of explained positions.

``run`` is the subcommand (``nla audit``); ``plan`` checks the inputs and lays the audit out before
any model loads (positions, cost); ``manifest`` keeps ``audit.json`` so only the same audit resumes;
``worker`` writes the shards, one process or many under ``torchrun``. ``query`` (``nla audit
query``) and ``page`` (``nla audit page``) read what it wrote. The table's format is
``nla.data.audit_table``.
"""
