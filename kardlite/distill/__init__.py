"""Student distillation: training examples (FT, RD, KARD), training, evaluation."""

from kardlite.distill.examples import build_examples, read_examples, read_kept_rationales, save_examples
from kardlite.distill.student import Student, load_student
from kardlite.distill.train import StudentTrainConfig, train_student

__all__ = ["Student", "StudentTrainConfig", "build_examples", "load_student", "read_examples",
           "read_kept_rationales", "save_examples", "train_student"]
