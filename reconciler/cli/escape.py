"""Escaping for what the CLI prints that came from specs, a runtime or the journal.

A spec value, a container's name or an error text must not be able to forge output:
move the terminal's cursor, start a line of its own, issue a GitHub Actions workflow
command, or inject HTML, mentions or Markdown structure into a pull-request comment.

- :func:`visible` (terminals, logs, every text format): every character that is not
  printable (C0 and C1 controls, DEL, line and paragraph separators, bidi controls,
  zero-width and other format characters, spaces other than U+0020, lone surrogates)
  is shown as an escape (``\\n``, ``\\x1b``, ``\\u202e``), so one value is always part
  of one line and cannot move the cursor; the legacy workflow-command prefix ``##[``,
  which GitHub Actions recognises anywhere in a log line, is broken up (``#\\x23[``).
- :func:`visible_line`: :func:`visible` for text that starts an output line; a leading
  ``::`` (a workflow command) is escaped too (``\\x3a:``).
- :func:`markup`: :func:`visible`, then escaped for rich's markup.
- :func:`workflow_data`, :func:`workflow_property`: GitHub workflow command escaping.
- :func:`md_text`, :func:`md_code`, :func:`md_code_html`: Markdown for pull requests.

Pure functions, no I/O; backslashes are not escaped, so ordinary text prints unchanged.
"""

from __future__ import annotations

import re

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# @mentions notify people, issue and pull-request references (#12, owner/repo#12,
# GH-12) link elsewhere and leave a trace there; in code spans GitHub does neither.
_REFERENCE = re.compile(
    r"@[A-Za-z0-9][A-Za-z0-9-]*(?:/[A-Za-z0-9][A-Za-z0-9-]*)?|#[0-9]+|\bGH-[0-9]+"
)
_MD_PUNCTUATION = {c: "\\" + c for c in "\\`*_[]~|"}
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _escaped(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with every non-printable character shown as an escape, on one line."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escaped(c) for c in text)
    if "##[" in text:
        text = text.replace("##[", "#\\x23[")
    return text


def visible_line(text: str) -> str:
    """:func:`visible` for text at the start of an output line: it cannot be read as a
    GitHub workflow command (``::warning …::``) either."""
    text = visible(text)
    indent = len(text) - len(text.lstrip(" "))
    if text.startswith("::", indent):
        text = text[:indent] + "\\x3a" + text[indent + 1 :]
    return text


def markup(text: str, *, line_start: bool = False) -> str:
    """:func:`visible` (:func:`visible_line` with ``line_start``), escaped for rich
    markup: ``[bold]`` prints as it is."""
    from rich.markup import escape as _rich_escape  # not for `zlayer --version`

    return _rich_escape(visible_line(text) if line_start else visible(text))


def workflow_data(text: str) -> str:
    """The message of a GitHub workflow command (``::error …::MESSAGE``): ``%``, CR and
    LF percent-encoded (a multi-line message stays one command), other controls
    visible."""
    return visible(text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A"))


def workflow_property(text: str) -> str:
    """A property value of a GitHub workflow command (``file=``, ``title=``, …): as
    :func:`workflow_data`, and ``:`` and ``,`` encoded too, so a value cannot end the
    property list or start another property."""
    return workflow_data(text).replace(":", "%3A").replace(",", "%2C")


def md_text(text: str) -> str:
    """Plain text in Markdown (a table cell, a list item): nothing in it is markup.

    Controls visible, HTML characters as entities (no tags, no ``</details>``),
    Markdown's inline punctuation and table pipes backslash-escaped, @mentions and
    issue references put in code spans (GitHub notifies and links neither there).
    """
    text = visible(text)
    text = "".join(_MD_PUNCTUATION.get(c) or _HTML.get(c) or c for c in text)
    return _REFERENCE.sub(lambda m: f"`{m.group()}`", text)


def md_code(text: str, *, table: bool = False) -> str:
    """``text`` as a Markdown code span, its fence longer than any run of backticks in
    it; in a table, pipes are escaped (GFM splits cells before it finds code spans).

    A code span shows ``<``, ``>`` and ``&`` as they are but cannot escape them, so a
    text holding one is put in a ``<code>`` element instead (:func:`md_code_html`):
    no tag-like text from a value reaches the comment raw.
    """
    text = visible(text)
    if any(c in text for c in "<>&"):
        return md_code_html(text)
    if table:
        text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    if text.startswith("`") or text.endswith("`") or (text[:1] == text[-1:] == " " and text):
        text = f" {text} "
    return f"{fence}{text}{fence}"


def md_code_html(text: str) -> str:
    """``text`` in an HTML ``<code>`` element, escaped as :func:`md_text`: monospace, and
    no raw ``<``, ``>`` or ``&`` from the value reaches the comment."""
    return f"<code>{md_text(text)}</code>"
