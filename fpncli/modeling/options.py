"""Model options declared once: the flag, type, help and rule of each architecture setting.

A :class:`ModelOption` sets one :class:`~fpncli.config.ModelConfig` field. The general ones
(backbone, neck, RoI pooling, channels, SAC) are listed in ``fpncli.config``; each neck's
own live with its registry entry (``fpncli.modeling.necks.registry``). Every command that
builds a model (train, info, inspect-levels, ablation) takes its flags from these lists
(``fpncli.cli.params``), the config check applies their rules, and ``fpn info`` shows a
neck's values, so a neck added to the registry appears everywhere with no other edit.

Torch-free, and importing nothing of fpncli but the error type, so that the registry and
the config can both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fpncli.errors import FpnError


@dataclass(frozen=True)
class ModelOption:
    """One architecture setting as a command-line option.

    Attributes:
        field: the ModelConfig field it sets.
        help: the option's help text (the default is added from ModelConfig by the CLI).
        type: ``int``, ``float`` or ``str`` for an option that takes a value; ``bool`` for
            a switch, which sets ``field`` to ``switch_value``.
        flag: the option's name; default ``--`` + ``field`` with dashes.
        switch_value: what a switch sets (``False`` for ``--no-rfa``).
        choices: the allowed values of a ``str`` option.
        rule: ``(test, text)``: a value for which ``test`` is false is refused with
            ``"<field> must <text>, got <value>"``.
        parse: turns the typed text into the field's value (e.g. ``"3,4,5"`` -> ``(3, 4, 5)``).
        also: other fields a switch sets with it (``--sac-deform`` sets ``sac`` too).
        requires: ``(field, text)``: given without that field also given, the option is
            refused with ``"<flag> <text>"``.
        neck: the neck that reads the field (None: every neck); set by the registry.
    """

    field: str
    help: str
    type: type = int
    flag: str = ""
    switch_value: Any = True
    choices: tuple[str, ...] = ()
    rule: tuple[Callable[[Any], bool], str] | None = None
    parse: Callable[[str], Any] | None = None
    also: tuple[tuple[str, Any], ...] = ()
    requires: tuple[str, str] | None = None
    neck: str | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.field.replace("_", "-")

    @property
    def is_switch(self) -> bool:
        return self.type is bool

    def check(self, value: Any) -> None:
        """Refuse a value outside the option's choices or rule (one line naming the field)."""
        if self.choices and value not in self.choices:
            raise FpnError(f"unknown {self.field} {value!r}; choose one of {', '.join(self.choices)}")
        if self.rule is not None and not self.rule[0](value):
            raise FpnError(f"{self.field} must {self.rule[1]}, got {value}")


def at_least(minimum: int, why: str = "") -> tuple[Callable[[Any], bool], str]:
    """A rule: a whole number of at least ``minimum`` (``why`` is added to the message)."""
    return (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
        f"be at least {minimum}{f' ({why})' if why else ''}",
    )


def owned_elsewhere(overrides: dict[str, Any], options: Sequence[ModelOption], neck: str) -> str | None:
    """Why neck options given for another neck would do nothing, or None: e.g.
    ``"--rfp-steps: only for --neck rfp (the fpn neck does not read it)"``."""
    by_owner: dict[str, list[str]] = {}
    for option in options:
        if option.neck is not None and option.neck != neck and option.field in overrides:
            by_owner.setdefault(option.neck, []).append(option.cli_flag)
    if not by_owner:
        return None
    owner, flags = next(iter(by_owner.items()))
    them = "them" if len(flags) > 1 else "it"
    return f"{' and '.join(flags)}: only for --neck {owner} (the {neck} neck does not read {them})"
