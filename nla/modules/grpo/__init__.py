"""GRPO joint training, in one place: the LightningModule (``module``), one rollout and its losses
(``rollout``), the loss maths as pure functions (``loss``), the frozen KL reference (``reference``) and
what the module runs besides its step (``evaluation``).

``GRPOModule`` is importable from here, so configs name it ``nla.modules.grpo.GRPOModule``.
"""

from nla.modules.grpo.module import GRPOModule

__all__ = ["GRPOModule"]
