"""Task records and loaders."""

from kardlite.data.loaders import load_generic, load_medqa, load_medqa_hf, load_obqa, load_strategyqa, load_task
from kardlite.data.records import LETTERS, QAItem

__all__ = ["LETTERS", "QAItem", "load_generic", "load_medqa", "load_medqa_hf", "load_obqa", "load_strategyqa",
           "load_task"]
