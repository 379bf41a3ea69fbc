"""Validated settings: every option declared once, with its type, range, help and flag.

A config is a frozen dataclass deriving from `Settings` whose fields are made with `setting()`.
Making one checks every field against its declaration (type, range, choices) and names the
first bad one: "train.lr (--lr) must be a number in (0, 10], got inf". The command line reads
the same declarations (`add_setting`, `help_text`), so the range `--help` shows is the range
that is enforced, and a TOML file, a JSON record and a Python caller are checked alike.

Rules: an integer is an int (not a bool); a number is a finite int or float (not a bool);
true/false is a bool (not "yes"); a list is a list or tuple of such items. Nothing here looks
at the outside world (files, devices): configs can be made, compared and resumed anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np

from prunewise.errors import PrunewiseError

__all__ = [
    "MAX_SEED",
    "REQUIRED",
    "Settings",
    "Spec",
    "add_setting",
    "add_settings",
    "help_text",
    "nested",
    "same_as",
    "setting",
    "settings_from_args",
    "spec_of",
]

REQUIRED: Any = dataclasses.MISSING
"""The default of a `setting` that has none (the caller must give it)."""

MAX_SEED = 2**63 - 1
"""Largest seed: torch's generators take 64-bit seeds, and prunewise derives its own within
63 bits (`derive_seed`, `epoch_seed`)."""

Kind = Literal["int", "float", "bool", "str", "ints", "floats", "strs"]
_NAMES = {"int": "an integer", "float": "a number", "ints": "integers", "floats": "numbers"}


def _is_int(value: object) -> bool:
    """An integer (a NumPy one too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _is_number(value: object) -> bool:
    """A finite real number (a NumPy one too), not a bool."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    return real and math.isfinite(value)  # type: ignore[arg-type]


def _normal(kind: str, value: Any) -> Any:
    """A checked item as Python's own type (NumPy numbers become int or float)."""
    return float(value) if kind == "float" else int(value) if kind == "int" else value


def _bound(value: float) -> str:
    if isinstance(value, int) and abs(value) >= 2**16 and (value + 1) & value == 0:
        return f"2^{(value + 1).bit_length() - 1}-1"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Spec:
    """What one option accepts. `low`/`high` bound numbers (and list items); `optional` admits
    None (unset); `pattern` constrains strings; `pattern_text` says in words what is accepted
    (it replaces the generated text); `flag` is its CLI option."""

    kind: Kind
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    optional: bool = False
    pattern: str | None = None
    pattern_text: str = ""
    flag: str | None = None
    metavar: str | None = None
    allow_empty: bool = False

    def range_text(self) -> str:
        """'in [1, 65536]', '> 0', '>= 0', or '' when unbounded."""
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_bound(lo)}, {_bound(hi)}{right}"
        if lo is not None:
            return f"{'>' if self.low_open else '>='} {_bound(lo)}"
        if hi is not None:
            return f"{'<' if self.high_open else '<='} {_bound(hi)}"
        return ""

    def requirement(self) -> str:
        """What the value must be, in words (the CLI help and the errors use it)."""
        if self.kind == "bool":
            text = "true or false"
        elif self.pattern_text:
            text = self.pattern_text
        elif self.choices is not None:
            text = "one of " + ", ".join(self.choices)
            if self.kind == "strs":
                text = "a list of " + text
        elif self.kind == "str":
            text = self.pattern_text or "a non-empty string"
        else:
            base = _NAMES.get(self.kind, "strings")
            rng = self.range_text()
            text = f"{base} {rng}".strip()
            if self.kind in ("ints", "floats", "strs"):
                text = f"a {'' if self.allow_empty else 'non-empty '}list of {text}"
        return text + (" or unset" if self.optional else "")

    def _in_range(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (
            self.high is not None and (value >= self.high if self.high_open else value > self.high)
        )

    def _item_ok(self, kind: str, value: object) -> bool:
        if kind == "int":
            return _is_int(value) and self._in_range(value)  # type: ignore[arg-type]
        if kind == "float":
            return _is_number(value) and self._in_range(value)  # type: ignore[arg-type]
        if kind == "bool":
            return isinstance(value, bool)
        if not isinstance(value, str) or not value:
            return False
        if self.choices is not None:
            return value in self.choices
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None

    def check(self, value: Any, label: str) -> Any:
        """`value` in its normal form (floats as float, lists as tuples); raise naming `label`."""
        if value is None and self.optional:
            return None
        if self.kind in ("ints", "floats", "strs"):
            item = self.kind[:-1]
            ok = (
                isinstance(value, list | tuple)
                and (len(value) > 0 or self.allow_empty)
                and all(self._item_ok(item, v) for v in value)
            )
            if ok:
                return tuple(_normal(item, v) for v in value)
        elif self._item_ok(self.kind, value):
            return _normal(self.kind, value)
        raise PrunewiseError(f"{label} must be {self.requirement()}, got {value!r}")

    def parse(self, text: str) -> Any:
        """A command-line string as a value of this kind (argparse reports a failure)."""
        try:
            if self.kind in ("ints", "floats", "strs"):
                item = {"ints": int, "floats": float, "strs": str}[self.kind]
                return tuple(item(v.strip()) for v in text.split(",") if v.strip())
            if self.kind == "int":
                return int(text)
            if self.kind == "float":
                return float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"must be {self.requirement()}, got {text!r}") from exc
        return text


def setting(
    default: Any,
    help: str,
    *,
    kind: Kind | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: Sequence[str] | None = None,
    optional: bool = False,
    pattern: str | None = None,
    pattern_text: str = "",
    flag: str | None = None,
    metavar: str | None = None,
    allow_empty: bool = False,
) -> Any:
    """A dataclass field declared with what it accepts (see `Spec`); the kind follows the
    default when not given (a None default needs `kind`). `REQUIRED` as the default makes a
    field without a default (give `kind`)."""
    if kind is None:
        if isinstance(default, bool):
            kind = "bool"
        elif isinstance(default, int):
            kind = "int"
        elif isinstance(default, float):
            kind = "float"
        elif isinstance(default, str):
            kind = "str"
        else:
            raise TypeError(f"give the kind of a setting whose default is {default!r}")
    spec = Spec(
        kind=kind,
        help=help,
        low=low,
        high=high,
        low_open=low_open,
        high_open=high_open,
        choices=tuple(choices) if choices is not None else None,
        optional=optional or default is None,
        pattern=pattern,
        pattern_text=pattern_text,
        flag=flag,
        metavar=metavar,
        allow_empty=allow_empty,
    )
    if default is REQUIRED:
        return dataclasses.field(metadata={"spec": spec})
    return dataclasses.field(default=default, metadata={"spec": spec})


def same_as(cls: type, name: str, **changes: Any) -> Any:
    """A field declared like field `name` of `cls` (same default and spec), with `changes` to
    the spec (e.g. another flag) or a new `default`."""
    spec = spec_of(cls, name)
    default = changes.pop("default", next(f.default for f in fields(cls) if f.name == name))
    return dataclasses.field(
        default=default, metadata={"spec": dataclasses.replace(spec, **changes)}
    )


def nested(factory: Callable[[], Settings]) -> Any:
    """A field holding another config (a TOML table), made by `factory` by default."""
    return dataclasses.field(default_factory=factory, metadata={"nested": True})


def spec_of(cls: type, name: str) -> Spec:
    """The declaration of field `name` of config class `cls`."""
    for f in fields(cls):
        if f.name == name and "spec" in f.metadata:
            return f.metadata["spec"]
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


class Settings:
    """Base of the frozen config dataclasses: checks every declared field when made.

    `section` names the config in messages and TOML ("train" -> "train.lr"). Subclasses put
    checks that tie several fields together in `check()`, which runs after the fields are.
    """

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if "spec" in f.metadata:
                spec: Spec = f.metadata["spec"]
                label = self.label(f.name, spec)
                object.__setattr__(self, f.name, spec.check(value, label))
            elif f.metadata.get("nested"):
                expected = type(f.default_factory())  # type: ignore[misc]
                if not isinstance(value, expected):
                    raise PrunewiseError(
                        f"{self.label(f.name)} must be a {expected.__name__} (a table), "
                        f"got {value!r}"
                    )
        self.check()

    @classmethod
    def given(cls, value: Any) -> Any:
        """`value` when it is one of these configs, the defaults when it is None. Raises
        PrunewiseError for anything else (a dict: make the config from it)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        hint = ""
        if isinstance(value, dict):
            hint = f"; make one from the dict: {cls.__name__}(**settings)"
        article = "an" if cls.__name__[:1] in "AEIOU" else "a"
        raise PrunewiseError(
            f"config must be {article} {cls.__name__}, got {type(value).__name__}{hint}"
        )

    def label(self, name: str, spec: Spec | None = None) -> str:
        """How messages name a field: 'train.lr (--lr)'."""
        where = f"{self.section}.{name}" if self.section else name
        return f"{where} ({spec.flag})" if spec is not None and spec.flag else where

    def fail(self, name: str, requirement: str, value: Any) -> None:
        """Raise the standard message for field `name` with a requirement of its own."""
        spec = next(
            (f.metadata.get("spec") for f in fields(self) if f.name == name),  # type: ignore[arg-type]
            None,
        )
        raise PrunewiseError(f"{self.label(name, spec)} must be {requirement}, got {value!r}")

    def check(self) -> None:
        """Checks across fields; the fields themselves are already checked."""


def help_text(cls: type, name: str, shown: Any = REQUIRED) -> str:
    """The CLI help of a setting: its help, what it accepts and its default (`shown` when the
    config that holds `cls` gives it another one)."""
    spec = spec_of(cls, name)
    default = next(f.default for f in fields(cls) if f.name == name) if shown is REQUIRED else shown
    if spec.kind == "bool":
        return spec.help
    free_text = spec.kind == "str" and spec.choices is None and not spec.pattern_text
    accepts = "" if free_text else f"{spec.requirement()}; "  # a path or a name: its help says
    if default is REQUIRED:
        return f"{spec.help} ({accepts}required)"
    shown = "unset" if default is None else default
    if isinstance(shown, tuple):
        shown = ",".join(str(v) for v in shown)
    return f"{spec.help} ({accepts}default {shown})"


def add_setting(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    name: str,
    *,
    dest: str | None = None,
    suppress: bool = False,
    parse: Callable[[str], Any] | None = None,
    aliases: tuple[str, ...] = (),
    shown: Any = REQUIRED,
) -> argparse.Action:
    """Add (and return) the CLI option of setting `name` of `cls`: its flag, parser, help
    and default.

    A bool setting whose flag starts with '--no-' stores False, any other bool flag True.
    With `suppress`, an option not given leaves no attribute (only given options override).
    `parse` replaces the setting's own parser of the command-line text; `aliases` are more
    flags for the same option; `shown` is the default the help states, where the config that
    holds `cls` has its own (RunConfig's train.epochs).
    """
    spec = spec_of(cls, name)
    if spec.flag is None:
        raise KeyError(f"{cls.__name__}.{name} has no command-line flag")
    default = next(f.default for f in fields(cls) if f.name == name)
    kwargs: dict[str, Any] = {"dest": dest or name, "help": help_text(cls, name, shown)}
    kwargs["default"] = argparse.SUPPRESS if suppress else default
    if spec.kind == "bool":
        kwargs["action"] = "store_false" if spec.flag.startswith("--no-") else "store_true"
    else:
        kwargs["type"] = parse or spec.parse
        kwargs["metavar"] = spec.metavar or (
            "{" + ",".join(spec.choices) + "}" if spec.choices else name.upper()
        )
    return parser.add_argument(spec.flag, *aliases, **kwargs)


def add_settings(
    parser: argparse.ArgumentParser,
    cls: type,
    names: Sequence[str],
    *,
    title: str | None = None,
    required: Sequence[str] = (),
    suppress: bool = False,
) -> None:
    """`add_setting` for each of `names` (in a group called `title` when given); the options
    in `required` must be given; with `suppress`, only the given options leave an attribute."""
    target = parser.add_argument_group(title) if title else parser
    for name in names:
        action = add_setting(target, cls, name, suppress=suppress)
        action.required = name in required


def settings_from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """An instance of config `cls` from the parsed options that are its fields (the others
    keep their defaults), with `extra` fields; checked as any config is."""
    names = {f.name for f in fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**given, **extra})
