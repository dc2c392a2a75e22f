"""Teacher summaries for the SFT warm start (method notes §6): providers, parsing and a resumable cache."""

from nla.data.teachers.base import (
    INSTRUCTION,
    INSTRUCTION_VERSION,
    MIN_FEATURES,
    Summary,
    Teacher,
    TeacherArgs,
    TeacherRequest,
    clean_feature,
    parse_features,
    render_instruction,
)
from nla.data.teachers.cache import SummaryCache, TeacherReport, cache_key, summarize_all
from nla.data.teachers.registry import PROVIDERS, build_teacher, chat_teacher

__all__ = [
    "INSTRUCTION",
    "INSTRUCTION_VERSION",
    "MIN_FEATURES",
    "PROVIDERS",
    "Summary",
    "SummaryCache",
    "Teacher",
    "TeacherArgs",
    "TeacherReport",
    "TeacherRequest",
    "build_teacher",
    "cache_key",
    "chat_teacher",
    "clean_feature",
    "parse_features",
    "render_instruction",
    "summarize_all",
]
