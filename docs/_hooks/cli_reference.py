"""mkdocs hook: the CLI reference page, generated from the Typer app at build time.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it with one
section per command (usage, help text, then its options grouped by help panel), read from the
Click command Typer builds. Nothing is copied by hand, so a new command or option appears on the
next build, and a command whose help cannot be rendered fails the (strict) build.
"""

from __future__ import annotations

import html
import re
from typing import Any

import typer

MARKER = "<!-- cli-reference -->"
_MARKUP = re.compile(r"\[/?(bold|dim|red|yellow|green|italic|cyan|magenta|b|i)( [^\]]*)?\]")


def _plain(text: str | None) -> str:
    """Help text as Markdown: Rich markup dropped, paragraphs kept."""
    if not text:
        return ""
    escaped = "\0"  # Rich's "\\[" is a literal bracket, never markup
    text = _MARKUP.sub("", text.replace("\\[", escaped)).replace(escaped, "[")
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip())]
    return "\n\n".join(p.replace("\b", "").strip() for p in paragraphs if p.strip())


def _cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _names(param: Any) -> str:
    if param.param_type_name == "argument":
        return f"`{(param.metavar or param.name or '').upper()}`"
    opts = list(param.opts)
    if getattr(param, "secondary_opts", None):
        opts += list(param.secondary_opts)
    return ", ".join(f"`{o}`" for o in opts)


def _value(param: Any, ctx: Any) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    if param.metavar:
        return param.metavar
    display = getattr(param, "display_type", None)  # Typer's own "<int>", "<path>", ...
    return display(ctx).strip("<>") if display else ""


def _default(param: Any) -> str:
    if getattr(param, "is_flag", False) or getattr(param, "show_default", None) is False:
        return ""
    value = param.default
    if value is None or callable(value) or value == ():
        return ""
    return f"`{value}`"


def _command_section(path: list[str], cmd: Any, parent: Any) -> list[str]:
    ctx = cmd.context_class(cmd, info_name=path[-1], parent=parent)
    name = " ".join(path)
    lines = [f"## `{name}`" if len(path) > 1 else f"## `{name}` (root)", ""]
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    lines += ["```", f"{ctx.command_path} {usage}".rstrip(), "```", ""]
    lines += [_plain(cmd.help), ""]
    panels: dict[str, list[Any]] = {}
    for param in cmd.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            panel = "Arguments"
        else:
            panel = getattr(param, "rich_help_panel", None) or "Options"
        panels.setdefault(panel, []).append(param)
    for panel, params in panels.items():
        lines += [
            f"**{panel}**",
            "",
            "| option | value | default | description |",
            "|---|---|---|---|",
        ]
        for p in params:
            help_text = _plain(getattr(p, "help", None))
            lines.append(
                f"| {_names(p)} | {_cell(_value(p, ctx))} | {_default(p)} | {_cell(help_text)} |"
            )
        lines.append("")
    if hasattr(cmd, "commands"):  # a group (Typer ships its own click)
        subs = cmd.list_commands(ctx)
        if subs:
            lines += ["Commands: " + ", ".join(f"`{' '.join([*path, s])}`" for s in subs), ""]
        for sub in subs:
            sub_cmd = cmd.get_command(ctx, sub)
            if sub_cmd is not None and not sub_cmd.hidden:
                lines += _command_section([*path, sub], sub_cmd, ctx)
    return lines


def reference() -> str:
    from zoattack.cli.main import app

    root = typer.main.get_command(app)
    return "\n".join(_command_section(["zoattack"], root, None))


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference())
