"""Teacher LLMs that write rationales: an OpenAI-compatible endpoint, a local GGUF, or an existing release."""

from kardlite.teacher.base import Sample, Teacher, TeacherError, TeachSummary
from kardlite.teacher.factory import get_teacher

__all__ = ["Sample", "TeachSummary", "Teacher", "TeacherError", "get_teacher"]
