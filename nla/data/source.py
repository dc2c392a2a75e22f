"""``DataSource``: where every row comes from, the one data block a target's configs share.

A family's ``configs/<family>/data.yaml`` holds one: ``nla cache`` reads it whole (``--source``), and
the SFT and GRPO configs name it as ``data.init_args.source``, so the target, the corpus, the cache,
the splits, the teacher and the prompts are written once per target model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nla.core.prompts import PromptArgs
from nla.data.cache_plan import CacheArgs
from nla.data.corpus import CorpusArgs
from nla.data.splits import SplitArgs
from nla.data.teachers.base import TeacherArgs
from nla.models.loading import ModelArgs


@dataclass(kw_only=True)
class DataSource:
    """The rows both training stages read: the target and corpus they come from, the activation
    cache built from them, their document splits, who summarises them, and the prompts around them."""

    target: ModelArgs
    """The target model: its tokenizer, chat template and activations."""
    corpus: CorpusArgs
    """Documents the activations are taken from."""
    cache: CacheArgs = field(default_factory=CacheArgs)
    """The activation cache (layer K, positions per document, storage); built when missing."""
    splits: SplitArgs = field(default_factory=SplitArgs)
    """Document-level split fractions."""
    teacher: TeacherArgs = field(default_factory=TeacherArgs)
    """Who writes the warm-start summaries of the av_sft, ar_sft and heldout rows."""
    prompts: PromptArgs = field(default_factory=PromptArgs)
    """Wording of the AV and AR prompts and the marker (SFT and GRPO must read the same)."""
