"""``FitPlan``: what a training module will read, write and generate, as the pre-flight asks it.

The pre-flight of ``nla fit`` and the quickstart checks paths, sequence lengths and disk space before
anything loads; each module answers for itself (``fit_plan()``), so the checks never guess a module's
kind from the names of its settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FitPlan:
    trains: tuple[str, ...]
    """The models the run trains: ``verbalizer`` and/or ``reconstructor``."""
    adapters_only: bool = False
    """Only LoRA adapters train, so a checkpoint holds little beyond the frozen weights."""
    exports: dict[str, str] = field(default_factory=dict)
    """Config key -> directory of every pair export the run writes."""
    starts_from: tuple[str, str] | None = None
    """(config key, directory) of an exported pair the run loads first (GRPO's SFT export)."""
    generated: tuple[str, int] | None = None
    """(config key, cap) of the answers the AV writes (SFT's sample tables, GRPO's rollouts)."""
    reconstructor_reads_answers: bool = False
    """The AR reads the AV's own answers (GRPO); otherwise it reads the teacher's summaries."""
