"""The pre-flight's bound on the length of an epoch: a ``trainer.val_check_interval`` longer than any
epoch can be is refused before the cache is built or a model loads.

Lightning refuses such an interval only once the training loaders exist, after both models have loaded
(``nla.data.datamodule.check_val_check_interval`` says so in one line then). The rows of the longest
training split are known without that: counted in a finished cache's ``meta.json``, or, before the
cache is built, at most ``corpus.max_documents`` x ``cache.positions_per_document``. Rows dropped with
the teacher's failed answers only shorten the epoch, so the bound is never too low; where neither count
exists (no ``max_documents``), the check waits for the loaders.
"""

from __future__ import annotations

import json
from pathlib import Path

from nla.core.errors import ConfigError
from nla.data.cache_format import META


def training_rows(datamodule) -> tuple[int, str] | None:
    """At most how many rows the longest training split of ``datamodule`` serves, and whence that count;
    None when it is unknown before the cache is built."""
    if datamodule.cache_ready():
        stats = json.loads((Path(datamodule.cache_args.directory) / META).read_text())["stats"]
        rows = max(stats[split]["count"] for split in datamodule.train_splits)
        return rows, f"{rows} rows in the cache"
    corpus, cache = datamodule.corpus_args, datamodule.cache_args
    if corpus.max_documents is None:
        return None
    rows = corpus.max_documents * cache.positions_per_document
    return rows, (f"at most {rows} rows, corpus.max_documents {corpus.max_documents} x cache.positions_per_document "
                  f"{cache.positions_per_document}")


def check_epoch_length(trainer, datamodule) -> None:
    """Refuse an integer ``trainer.val_check_interval`` beyond the batches an epoch can hold, counted as
    Lightning counts them: per process, the last batch partial, cut by ``limit_train_batches``."""
    interval, limit = trainer.val_check_interval, trainer.limit_train_batches
    # As Lightning: a fractional interval, counting across epochs or no validation at all leave nothing to check.
    if not isinstance(interval, int) or trainer.check_val_every_n_epoch is None or not trainer.limit_val_batches:
        return
    counted = training_rows(datamodule)
    # An empty split has its own one line once the data is open.
    if counted is None or counted[0] == 0:
        return
    rows, whence = counted
    per_process = -(-rows // trainer.world_size)
    batches = -(-per_process // datamodule.batch_size)
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    if interval > batches:
        raise ConfigError("trainer.val_check_interval", f"is {interval} training batches but an epoch has at most "
                          f"{batches}: {whence} (data.batch_size {datamodule.batch_size}); lower it, or set "
                          "trainer.check_val_every_n_epoch: null to count batches across epochs")
