"""mkdocs hook: the CLI reference, generated from the Typer app at build time.

A page asks for the reference with an HTML comment on a line of its own:

    <!-- cli-reference -->                 every command (global options first)
    <!-- cli-reference: detect -->         one command, as a section of that page
    <!-- cli-reference: data synth -->     a sub-command

The hook imports ``fpncli.cli.app.app``, turns it into its click command tree with
``typer.main.get_command`` and renders every command's usage, help, arguments and options
(names, type, default, help, environment variable) and its epilog (the examples) as
Markdown. Nothing about individual options is written here: an option added, renamed or
removed in the code shows up in the next build, so the reference cannot drift. A marker
naming a command the app does not have fails the build.

The code only uses what click's and Typer's parameter objects have had for years
(``opts``, ``secondary_opts``, ``default``, ``help``, ``required``, ``is_flag``,
``hidden``, ``envvar``, ``context_class``, ``list_commands``) and falls back where a
newer or older Typer differs (``bare_type`` in Typer's own click, ``type.name`` in click).
"""

from __future__ import annotations

import enum
import html
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.cli_reference")

MARKER = re.compile(r"^<!--\s*cli-reference(?::\s*(?P<path>[\w\- ]+?))?\s*-->\s*$", re.MULTILINE)
REFERENCE_PAGE = "reference/cli.md"

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # the checkout's fpncli, also without `pip install -e .`
    sys.path.insert(0, str(_ROOT))


def _root_command() -> Any:
    import typer

    from fpncli.cli.app import app

    return typer.main.get_command(app)


# --------------------------------------------------------------------------- text helpers


def _plain(text: str | None) -> str:
    """Help text as the terminal shows it: Rich markup ([bold], [cyan], ...) removed."""
    if not text:
        return ""
    try:
        from rich.text import Text

        return Text.from_markup(text).plain
    except Exception:  # not valid markup: the text is shown as written
        return text


def _md_inline(text: str) -> str:
    """Escape text for a Markdown paragraph or table cell; `code spans` stay code."""
    pieces = re.split(r"(`[^`]+`)", text) if text.count("`") % 2 == 0 else [text]
    return " ".join(
        "".join(p if p.startswith("`") and p.endswith("`") and len(p) > 1 else _escape(p) for p in pieces).split()
    )


def _escape(text: str) -> str:
    text = text.replace("\\", "\\\\")
    for ch in "`*_[]|":
        text = text.replace(ch, "\\" + ch)
    return html.escape(text, quote=False)


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _block(text: str) -> str:
    """Help or epilog text: paragraphs as text, indented paragraphs as one bash block."""
    text = _plain(text).replace("\b\n", "\n").replace("\b", "")
    paragraphs = re.split(r"\n\s*\n", text.strip("\n"))
    out: list[str] = []
    code: list[str] = []

    def flush() -> None:
        if code:
            out.append("```bash\n" + "\n".join(code) + "\n```")
            code.clear()

    for para in paragraphs:
        lines = para.splitlines()
        if lines and all(line.startswith((" ", "\t")) for line in lines if line.strip()):
            indent = min(len(x) - len(x.lstrip()) for x in lines if x.strip())
            code.extend(line[indent:] for line in lines)
        else:
            flush()
            out.append(_md_inline(para))
    flush()
    return "\n\n".join(out)


# --------------------------------------------------------------------------- parameters


def _type_name(param: Any) -> str:
    bare = getattr(param, "bare_type", None)
    if callable(bare):  # Typer's own click (typer >= 0.17)
        try:
            return str(bare())
        except Exception:
            pass
    ptype = getattr(param, "type", None)
    choices = getattr(ptype, "choices", None)
    if choices:
        return " \\| ".join(str(getattr(c, "value", c)) for c in choices)
    name = getattr(ptype, "name", None)
    return str(name) if name else "text"


def _is_flag(param: Any) -> bool:
    return bool(getattr(param, "is_flag", False))


def _value(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, (list, tuple)):
        return ",".join(_value(v) for v in value)
    return str(value)


def _default(param: Any) -> str:
    if getattr(param, "required", False):
        return "required"
    show = getattr(param, "show_default", None)
    if isinstance(show, str) and show:
        return _md_inline(show)
    default = getattr(param, "default", None)
    if callable(default):
        return "(computed)"
    if _is_flag(param) and isinstance(default, bool):
        secondary = list(getattr(param, "secondary_opts", []) or [])
        if secondary:
            on = max(param.opts, key=len)
            return _code(on if default else max(secondary, key=len))
        return "on" if default else "off"
    if default is None or default == () or default == []:
        return "–"
    return _code(_value(default))


def _names(param: Any) -> str:
    if getattr(param, "param_type_name", "") == "argument":
        name = (getattr(param, "metavar", None) or param.name or "").upper()
        if getattr(param, "nargs", 1) == -1:
            name += "..."
        return _code(name)
    opts = sorted(param.opts, key=lambda o: (o.startswith("--"), o))  # -o before --out
    names = ", ".join(_code(o) for o in opts)
    secondary = list(getattr(param, "secondary_opts", []) or [])
    if secondary:
        names += " / " + ", ".join(_code(o) for o in secondary)
    return names


def _help(param: Any) -> str:
    text = _md_inline(_plain(getattr(param, "help", None)))
    envvar = getattr(param, "envvar", None)
    if envvar:
        envs = [envvar] if isinstance(envvar, str) else list(envvar)
        text += " Environment: " + ", ".join(_code("$" + e) for e in envs) + "."
    if getattr(param, "deprecated", False):
        text = "**Deprecated.** " + text
    return text.strip() or "–"


def _table(params: list[Any], first: str) -> str:
    rows = [f"| {first} | Type | Default | Description |", "|---|---|---|---|"]
    for p in params:
        kind = "flag" if _is_flag(p) else _md_inline(_type_name(p))
        rows.append(f"| {_names(p)} | {kind} | {_default(p)} | {_help(p)} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- commands


def _children(cmd: Any, ctx: Any) -> list[tuple[str, Any, Any]]:
    if not hasattr(cmd, "list_commands"):
        return []
    out = []
    for name in cmd.list_commands(ctx):
        sub = cmd.get_command(ctx, name)
        if sub is None or getattr(sub, "hidden", False):
            continue
        out.append((name, sub, sub.context_class(sub, info_name=name, parent=ctx)))
    return out


def _anchor(path: list[str]) -> str:
    return "-".join(["fpn", *path]).replace(" ", "-")


def _usage(cmd: Any, ctx: Any) -> str:
    pieces = [ctx.command_path, "[OPTIONS]"]
    for p in cmd.params:
        if getattr(p, "param_type_name", "") == "argument" and not getattr(p, "hidden", False):
            name = (getattr(p, "metavar", None) or p.name or "").upper()
            name += "..." if getattr(p, "nargs", 1) == -1 else ""
            pieces.append(name if getattr(p, "required", False) else f"[{name}]")
    if hasattr(cmd, "list_commands"):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def render_command(cmd: Any, ctx: Any, path: list[str], level: int) -> str:
    """One command (and, for a group, each sub-command) as Markdown."""
    title = " ".join(["fpn", *path])
    parts = [f"{'#' * level} `{title}` {{#{_anchor(path)}}}", f"```text\n{_usage(cmd, ctx)}\n```"]
    if cmd.help:
        parts.append(_block(cmd.help))
    params = [p for p in cmd.params if not getattr(p, "hidden", False)]
    args = [p for p in params if getattr(p, "param_type_name", "") == "argument"]
    opts = [p for p in params if getattr(p, "param_type_name", "") != "argument"]
    if args:
        parts.append("**Arguments**\n\n" + _table(args, "Argument"))
    if opts:
        parts.append("**Options**\n\n" + _table(opts, "Option"))
    children = _children(cmd, ctx)
    if children:
        parts.append(
            "**Commands**\n\n"
            + "\n".join(
                f"- [`{' '.join(['fpn', *path, n])}`](#{_anchor([*path, n])}): "
                f"{_md_inline(_plain(s.get_short_help_str(limit=200)))}"
                for n, s, _ in children
            )
        )
    if cmd.epilog:
        parts.append(_block(cmd.epilog))
    for name, sub, sub_ctx in children:
        parts.append(render_command(sub, sub_ctx, [*path, name], min(level + 1, 6)))
    return "\n\n".join(parts)


def render_all(level: int = 2) -> str:
    root = _root_command()
    ctx = root.context_class(root, info_name="fpn")
    parts = [f"{'#' * level} Global options {{#fpn}}", f"```text\n{_usage(root, ctx)}\n```"]
    if root.params:
        parts.append(_table([p for p in root.params if not getattr(p, "hidden", False)], "Option"))
    parts.append("Every command also takes `--help`, which prints the same options in the terminal.")
    parts.append(
        f"{'#' * level} Commands\n\n"
        + "\n".join(
            f"- [`fpn {n}`](#{_anchor([n])}): {_md_inline(_plain(c.get_short_help_str(limit=200)))}"
            for n, c, _ in _children(root, ctx)
        )
    )
    for name, sub, sub_ctx in _children(root, ctx):
        parts.append(render_command(sub, sub_ctx, [name], level))
    return "\n\n".join(parts)


def render_one(path: list[str], level: int = 2) -> str:
    root = _root_command()
    cmd, ctx = root, root.context_class(root, info_name="fpn")
    for i, name in enumerate(path):
        found = {n: (s, c) for n, s, c in _children(cmd, ctx)}
        if name not in found:
            known = ", ".join(sorted(found)) or "none"
            raise ValueError(f"no command 'fpn {' '.join(path[: i + 1])}' in fpncli.cli.app (known: {known})")
        cmd, ctx = found[name]
    return render_command(cmd, ctx, path, level)


# --------------------------------------------------------------------------- mkdocs events


def _heading_level(markdown: str, pos: int) -> int:
    """One below the last heading before the marker (## if there is none)."""
    last = 1
    prose = re.sub(r"^(```|~~~).*?^\1", "", markdown[:pos], flags=re.MULTILINE | re.DOTALL)
    for m in re.finditer(r"^(#{1,6})\s", prose, re.MULTILINE):
        last = len(m.group(1))
    return min(last + 1, 6)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "cli-reference" not in markdown:
        return markdown

    def replace(m: re.Match[str]) -> str:
        level = _heading_level(markdown, m.start())
        path = (m.group("path") or "").split()
        try:
            return render_one(path, level) if path else render_all(level)
        except ValueError as exc:
            from mkdocs.exceptions import PluginError

            raise PluginError(f"{page.file.src_uri}: {exc}") from exc

    return MARKER.sub(replace, markdown)
