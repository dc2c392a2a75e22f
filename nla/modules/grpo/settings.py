"""``RolloutArgs``: how GRPO samples, scores and weighs one rollout (``model.init_args.rollout``)."""

from __future__ import annotations

from dataclasses import dataclass

from nla.core.errors import ConfigError
from nla.models.sampling import SAMPLERS
from nla.modules.grpo.loss import AGGREGATION_MODES, KL_DEFAULT, KL_ESTIMATORS, REWARD_KINDS

FIELD = "model.rollout"
"""Where ``RolloutArgs`` sits in a fit config (error messages name its keys under it)."""


@dataclass(frozen=True, kw_only=True)
class RolloutArgs:
    """How one rollout is sampled, scored and turned into a loss; checked when built."""

    samples_per_prompt: int = 8
    """G: answers sampled per prompt; advantages compare the answers of one prompt."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass; memory grows with it, not with prompts x samples."""
    max_new_tokens: int = 150
    """Cap on generated tokens; an answer cut by it is truncated and scores as orthogonal."""
    temperature: float = 1.0
    """Sampling temperature. Below 1 the answers are drawn from the sharpened distribution while the
    ratio, the loss and the KL use the model's own (untempered) log-probs: off the exact policy
    gradient, but a small AV's temperature-1 answers are often unfinished and teach little."""
    reward: str = "neg_mse"
    """``neg_mse`` or ``neg_log_mse`` (see ``nla.modules.grpo.loss.penalized_rewards``)."""
    advantage: str = "group"
    """``group`` (normalised per prompt) or ``batch`` (centred per prompt, scaled by the batch std)."""
    clip_epsilon: float = 0.2
    """PPO clip range of the probability ratio."""
    kl_coef: float = 0.01
    """Weight of the KL penalty to the reference AV. 0 is no KL at all: no reference is built or run,
    and ``train/kl`` (which would need it) is not logged."""
    kl_estimator: str = KL_DEFAULT
    """``k2`` (pulls towards the reference: its expected gradient is that of KL(policy || reference)),
    ``k1`` (zero expected gradient as a loss: noise only) or ``k3`` (the gradient of the reverse
    KL(reference || policy)); see ``nla.modules.grpo.loss.kl_penalty``."""
    loss_aggregation: str = "token_mean"
    """``token_mean``, ``sequence_mean`` or ``sum_norm`` (see ``nla.modules.grpo.loss.aggregate``)."""
    sampler: str = "auto"
    """Sampling engine (``nla.models.sampling``): ``auto`` (``static`` on CUDA, else ``loop``),
    ``loop`` or ``static``; each prompt's G answers share one prefill with ``static``."""
    unfinished: str = "orthogonal"
    """How an answer cut by the cap is rewarded: ``orthogonal`` (as every invalid answer, the reward
    of MSE 2) or ``scored`` (closed at the cap: the AR reads what it wrote after its opening tag, and
    ``unfinished_penalty`` is subtracted). Evaluation always counts it as orthogonal."""
    unfinished_penalty: float = 0.5
    """Subtracted from the reward of an unfinished answer under ``unfinished: scored``."""
    overlong_buffer: int = 0
    """Cap-aware length penalty (``nla.modules.grpo.loss.overlong_penalty``): the last this many tokens before
    the cap cost up to ``overlong_penalty`` of reward, rising linearly; 0 turns it off."""
    overlong_penalty: float = 1.0
    """The reward an answer that reaches the cap loses under ``overlong_buffer``."""
    uniform_groups: str = "zero"
    """Advantage of a group whose rewards are all equal: ``zero`` (no signal, as GRPO's per-group
    baseline gives) or ``batch`` (against the batch's mean and std, so a group that failed entirely
    is pushed down; ``nla.modules.grpo.loss.uniform_group_advantages``)."""
    greedy_answer: bool = False
    """Decode answer 0 of each group greedily (the answer evaluation and ``nla explain`` write) and
    sample the other G - 1. The greedy answer is scored (a greedy repetition loop, which sampled
    answers rarely show, like any unfinished answer) and counts in its group's rewards, the baseline
    the sampled answers are compared with. It was not drawn from the policy, so its tokens enter
    neither the policy-gradient nor the KL term (nor ``train/kl`` and ``train/clip_ratio``)."""

    def __post_init__(self) -> None:
        choices = {"reward": REWARD_KINDS, "advantage": ("group", "batch"), "kl_estimator": KL_ESTIMATORS,
                   "loss_aggregation": AGGREGATION_MODES, "sampler": SAMPLERS,
                   "unfinished": ("orthogonal", "scored"), "uniform_groups": ("zero", "batch")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{FIELD}.{name}", f"must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name, least in (("samples_per_prompt", 1), ("micro_batch_size", 1), ("max_new_tokens", 1),
                            ("overlong_buffer", 0)):
            if getattr(self, name) < least:
                raise ConfigError(f"{FIELD}.{name}", f"must be at least {least}, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ConfigError(f"{FIELD}.temperature", f"must be positive, got {self.temperature}")
        if self.overlong_buffer > self.max_new_tokens:
            raise ConfigError(f"{FIELD}.overlong_buffer", f"is {self.overlong_buffer}; it must not exceed max_new_tokens "
                              f"({self.max_new_tokens})")
        if self.greedy_answer and self.samples_per_prompt < 2:
            raise ConfigError(f"{FIELD}.greedy_answer", "needs samples_per_prompt of at least 2 (one greedy answer and "
                              "the sampled ones it is compared with); set samples_per_prompt or turn it off")
        # Both advantages centre each group on its own mean: a group of one answer always scores 0, and a
        # run would go to its end without a single gradient for the AV. Only uniform_groups: batch
        # (a uniform group against the batch) gives lone answers a signal.
        if self.samples_per_prompt < 2 and self.uniform_groups == "zero":
            raise ConfigError(f"{FIELD}.samples_per_prompt", f"is {self.samples_per_prompt}, so each answer is compared "
                              "only with itself and every advantage is 0 (the AV cannot learn); set it to 2 or more, "
                              "or rollout.uniform_groups: batch to compare answers across the batch")
