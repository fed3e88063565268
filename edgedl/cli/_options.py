"""Numeric option types for the CLI: each value is range-checked as click parses it, before any work.

A bad value is an :class:`~edgedl.errors.OptionError` naming the option, what it takes and what it got
(``--seed must be a whole number from 0 to 4294967295, got -1``): one ``error:`` line and exit 2, like
every other option error, instead of a traceback from deep inside NumPy or TensorFlow minutes later.

Example:
    >>> @click.option("--runs", type=Whole(min=1), default=200)  # doctest: +SKIP
"""

from __future__ import annotations

import math

import click

from edgedl.errors import OptionError

#: the seeds NumPy, TensorFlow and Python's random all take
SEED_MAX = 2**32 - 1


def _option_name(param) -> str:
    if param is None:
        return "the value"
    opts = [o for o in getattr(param, "opts", ()) if o.startswith("--")] or list(getattr(param, "opts", ()))
    return max(opts, key=len) if opts else str(param.name)


class Whole(click.ParamType):
    """A whole number in ``[min, max]`` (either bound may be open-ended)."""

    name = "integer"

    def __init__(self, min: int | None = None, max: int | None = None):
        self.min, self.max = min, max

    def expected(self) -> str:
        if self.min is not None and self.max is not None:
            return f"a whole number from {self.min} to {self.max}"
        if self.min == 1:
            return "a positive integer"
        if self.min == 0:
            return "a non-negative integer"
        if self.min is not None:
            return f"an integer, {self.min} or more"
        if self.max is not None:
            return f"an integer, {self.max} or less"
        return "an integer"

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            value = str(value)
        if isinstance(value, int):
            number = value
        else:
            text = str(value).strip()
            try:
                number = int(text, 10)
            except ValueError:
                raise OptionError(f"{_option_name(param)} must be {self.expected()}, got {text[:40]!r}") from None
        if (self.min is not None and number < self.min) or (self.max is not None and number > self.max):
            shown = str(number) if len(str(number)) <= 30 else f"{str(number)[:12]}... ({len(str(number))} digits)"
            raise OptionError(f"{_option_name(param)} must be {self.expected()}, got {shown}")
        return number


class Number(click.ParamType):
    """A finite number (never nan or inf) above ``min`` and below ``max``.

    ``min_open``/``max_open`` exclude the bound itself: ``Number(min=0, min_open=True)`` is "more than 0".
    """

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False,
                 max_open: bool = False):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def expected(self) -> str:
        if self.min is not None and self.max is not None:
            left, right = "(" if self.min_open else "[", ")" if self.max_open else "]"
            return f"a number in {left}{self.min:g}, {self.max:g}{right}"
        if self.min is not None:
            return f"a number {'more than' if self.min_open else 'at least'} {self.min:g}"
        if self.max is not None:
            return f"a number {'less than' if self.max_open else 'at most'} {self.max:g}"
        return "a finite number"

    def convert(self, value, param, ctx):
        text = str(value).strip()
        try:
            number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float(text)
        except (ValueError, OverflowError):
            raise OptionError(f"{_option_name(param)} must be {self.expected()}, got {text[:40]!r}") from None
        low = self.min is not None and (number <= self.min if self.min_open else number < self.min)
        high = self.max is not None and (number >= self.max if self.max_open else number > self.max)
        if not math.isfinite(number) or low or high:
            expected = self.expected().replace("a number", "a finite number", not math.isfinite(number))
            raise OptionError(f"{_option_name(param)} must be {expected}, got {text[:40]}")
        return number


#: ``--seed``: what NumPy, TensorFlow and Python's random take
SEED = Whole(0, SEED_MAX)
#: counts that must be at least one: epochs, samples, runs, threads, batch sizes
COUNT = Whole(min=1)
#: counts that may be zero: warm-up runs, retries
COUNT_OR_ZERO = Whole(min=0)
#: seconds to wait: positive and finite
SECONDS = Number(min=0, min_open=True)


class OutputOption(click.Option):
    """``-o/--output`` with older spellings (``--out``) that still work but stay out of ``--help``."""

    def __init__(self, *args, hidden_aliases=("--out",), **kwargs):
        super().__init__(*args, **kwargs)
        self.hidden_aliases = tuple(hidden_aliases)

    def get_help_record(self, ctx):
        shown, self.opts = self.opts, [o for o in self.opts if o not in self.hidden_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown
