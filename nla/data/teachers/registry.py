"""The teacher providers by name: checking ``TeacherArgs`` and building the teacher it names.

Kept apart from ``base`` so the providers, which build on ``base``, are never imported by it: each
provider module loads lazily here, so the offline default imports no torch.
"""

from __future__ import annotations

from nla.data.teachers.base import Teacher, TeacherArgs
from nla.core.errors import ConfigError

PROVIDERS = ("extractive", "hf", "openai", "anthropic")


def validate(args: TeacherArgs) -> None:
    """``ConfigError`` naming the first field of ``args`` that no teacher could run with."""
    if args.provider not in PROVIDERS:
        raise ConfigError("teacher.provider", f"unknown provider '{args.provider}'; use one of {', '.join(PROVIDERS)}")
    if args.provider != "extractive" and not args.model:
        raise ConfigError("teacher.model", f"the {args.provider} teacher needs a model name; set teacher.model")
    positive = {
        "max_concurrency": args.max_concurrency,
        "max_tokens": args.max_tokens,
        "batch_size": args.batch_size,
        "timeout_s": args.timeout_s,
    }
    for field, value in positive.items():
        if value <= 0:
            raise ConfigError(f"teacher.{field}", f"must be positive, got {value}")
    non_negative = {
        "max_retries": args.max_retries,
        "retry_base_delay_s": args.retry_base_delay_s,
        "retry_max_delay_s": args.retry_max_delay_s,
        "temperature": args.temperature,
    }
    for field, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"teacher.{field}", f"must not be negative, got {value}")


def build_teacher(args: TeacherArgs) -> Teacher:
    """The configured teacher."""
    validate(args)
    if args.provider == "extractive":
        from nla.data.teachers.extractive import ExtractiveTeacher

        return ExtractiveTeacher(args.model or "full")
    if args.provider == "hf":
        from nla.data.teachers.hf import HFTeacher

        return HFTeacher(args)
    from nla.data.teachers.remote import AnthropicTeacher, OpenAITeacher

    return (OpenAITeacher if args.provider == "openai" else AnthropicTeacher)(args)


def chat_teacher(args: TeacherArgs | None, field: str) -> Teacher | None:
    """The chat model configured under ``field`` (``--judge``, ``--rewriter``: a teacher put to other
    use than the warm start), checked before anything loads: errors name ``field``'s keys, and a
    rule-based teacher, which cannot answer, is refused. None when ``args`` is None."""
    if args is None:
        return None
    try:
        teacher = build_teacher(args)
    except ConfigError as error:
        # The checks name the warm start's key (teacher.*); here the settings are under ``field``.
        raise ConfigError(f"{field}.{error.field.removeprefix('teacher.')}",
                          error.detail.replace("teacher.", f"{field}.")) from None
    if type(teacher).answer is Teacher.answer:
        raise ConfigError(f"{field}.provider", f"the {teacher.name} teacher builds features from rules and cannot "
                          "rewrite or judge; use hf, openai or anthropic")
    return teacher
