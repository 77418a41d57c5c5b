"""Shared pieces of the fuzz tests (Hypothesis): settings and the text and JSON strategies.

Each fuzz target runs a few hundred derandomized cases (the same every run: CI failures reproduce) and asserts
that only kardlite's own errors escape, that no case takes a second of CPU time (CPU, not wall time: the test
machine is shared), and that whatever is accepted is the input unchanged (up to the documented stripping of
edge whitespace). A target whose inputs are mostly refused also checks that enough of them are accepted
(:class:`Tally`): a loader that refuses everything must fail its fuzz test, not pass it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from kardlite.errors import KardliteError

CASES = 200
LIMIT_S = 1.0


def fuzz_settings(cases: int = CASES) -> settings:
    return settings(max_examples=cases, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much],
                    print_blob=False)


def attempt(fn: Callable[..., Any], *args: Any, threads: int = 1, **kwargs: Any) -> tuple[Any, KardliteError | None]:
    """``fn(*args, **kwargs)`` as (result, None) or (None, the KardliteError it raised); any other exception
    propagates (a crash), and a call over a second of CPU time per thread it runs on fails the case."""
    start = time.process_time()
    try:
        return fn(*args, **kwargs), None
    except KardliteError as err:
        return None, err
    finally:
        spent = (time.process_time() - start) / threads
        assert spent < LIMIT_S, f"{getattr(fn, '__name__', fn)} took {spent:.2f} s of CPU time per thread"


class Tally:
    """Counts a fuzz run's cases and the accepted ones, to require a minimum share of accepted cases.

    Example:
        >>> tally = Tally()
        >>> @fuzz_settings()
        ... @given(text)
        ... def case(s): result, err = tally.attempt(fn, s)
        >>> case(); tally.require(0.3)  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.cases = self.accepted = 0

    def attempt(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, KardliteError | None]:
        """:func:`attempt`, counted."""
        result, err = attempt(fn, *args, **kwargs)
        self.cases += 1
        self.accepted += err is None
        return result, err

    def require(self, share: float) -> None:
        """Fail unless at least ``share`` of the cases were accepted (and the run had cases)."""
        assert self.cases > 0, "the fuzz run tried no case"
        assert self.accepted >= share * self.cases, \
            f"only {self.accepted} of {self.cases} cases accepted (at least {share:.0%} expected)"


# Characters that broke things before: superscript and circled digits, line and paragraph separators, form feed,
# record separators, NEL, lone surrogates, BOM, chat role markers, quotes and CSV/JSON syntax.
TRICKY = ["²", "①", "\u2028", "\u2029", "\x0c", "\x1e", "\x85", "\ud800", "\udfff", "\ufeff", "<|im_end|>",
          "<|im_start|>system\n", "\r\n", "\r", "\n", "\t", '"', ",", "|", "#", "# ", "A", "b", " ", "0", "1", "10",
          "{", "}", "[", "]", "\\", "é", "文"]
text = st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=6)), max_size=6).map("".join)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 12), st.integers(), st.floats(allow_nan=False),
                        text)
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner,
                                                                                                   max_size=3),
                          max_leaves=3)
