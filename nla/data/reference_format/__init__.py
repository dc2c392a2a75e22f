"""Datasets in the reference implementation's layout (parquet + ``.nla_meta.yaml``), imported into
nla's activation cache by ``nla import``: ``dataset`` reads and checks one file, ``convert`` writes
the cache and the teacher summaries, ``command`` is the subcommand."""
