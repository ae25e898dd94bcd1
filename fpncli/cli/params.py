"""Option groups declared once and shared by the commands that need them.

:func:`model_options` gives a command every architecture option
(:func:`fpncli.config.architecture_options`: the shared ones and each registered neck's),
with its flag, help and default from one declaration, and hands the command what the user
gave as one :class:`ModelArgs`. A neck added to the registry thereby appears in train,
info, inspect-levels and ablation with no other edit.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import typer

from fpncli.errors import FpnError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class ModelArgs:
    """The architecture options a user gave: ``given`` maps ModelConfig fields to values
    (switches as the value they set), ``flags`` lists the flags in command-line order."""

    given: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    def refuse_with_weights(self, weights: str) -> None:
        """Architecture options build a new model; a weights file brings its own."""
        if self.flags and weights != "none":
            raise FpnError(
                f"{', '.join(self.flags)}: architecture options build a new model (--weights none); "
                f"--weights {weights} brings its own architecture"
            )


def _default_text(option: Any) -> str:
    from fpncli.config import FIELD_DEFAULTS

    if option.neck is None or option.is_switch:
        return ""  # the shared ones depend on the preset; their help says so
    return f" (default {FIELD_DEFAULTS[option.field]})"


def _parameter(option: Any) -> inspect.Parameter:
    """The Typer parameter of one option: a flag for a switch, else an optional value."""
    base = option.help.rstrip(".")
    help_text = f"{base}{_default_text(option)}."
    if option.is_switch:
        annotation: Any = Annotated[bool, typer.Option(option.cli_flag, help=help_text)]
        default: Any = False
    else:
        kind = str if option.parse is not None else option.type
        annotation = Annotated[kind | None, typer.Option(option.cli_flag, help=help_text, show_default=False)]
        default = None
    return inspect.Parameter(
        option.field, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def collect(values: dict[str, Any], options: list[Any]) -> ModelArgs:
    """Typer's values of ``options`` (field -> value or None/False) -> ModelArgs."""
    args = ModelArgs()
    for option in options:
        value = values.get(option.field)
        if value is None or (option.is_switch and not value):
            continue
        args.flags.append(option.cli_flag)
        if option.is_switch:
            args.given[option.field] = option.switch_value
            args.given.update(option.also)
        else:
            args.given[option.field] = option.parse(value) if option.parse is not None else value
    for option in options:
        if (
            option.requires is not None
            and option.field in args.given
            and option.requires[0] not in args.given
        ):
            raise FpnError(f"{option.cli_flag} {option.requires[1]}")
    return args


def model_options(fn: F) -> F:
    """Command decorator: adds every architecture option where ``fn`` has its ``model``
    parameter, and calls ``fn`` with ``model=ModelArgs`` of those given."""
    from fpncli.config import architecture_options

    return _with_options(fn, architecture_options())


def neck_options(fn: F) -> F:
    """Command decorator: like :func:`model_options` with only each neck's own options
    (``fpn ablation``, whose rows name the neck and its modifiers)."""
    from fpncli.modeling.necks.registry import neck_options as options

    return _with_options(fn, options())


def _with_options(fn: F, options: list[Any]) -> F:
    return inject_group(
        fn, "model", [_parameter(o) for o in options], lambda values: collect(values, options)
    )


def inject_group(
    fn: F, name: str, added: list[inspect.Parameter], build: Callable[[dict[str, Any]], Any]
) -> F:
    """``fn`` with its parameter ``name`` replaced by the parameters ``added`` (Typer reads
    them from the signature); a call gathers their values and passes ``name=build(values)``."""
    signature = inspect.signature(fn)
    # The command modules use postponed annotations: resolve them, since Typer takes a set
    # __signature__ as it is.
    hints = typing.get_type_hints(fn, include_extras=True)
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()]
    at = [p.name for p in own].index(name)
    names = {p.name for p in added}

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {key: kwargs.pop(key) for key in list(kwargs) if key in names}
        return fn(*args, **{name: build(values)}, **kwargs)

    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in [*own[:at], *added, *own[at + 1 :]]]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
