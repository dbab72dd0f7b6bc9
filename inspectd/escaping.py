"""How untrusted text (file names, part ids, reasons that quote them) is shown on each output.

Whoever drops a file into the inbox chooses its name, and a reason may quote it, so on every
text output such text must not be able to start a line of its own, move a terminal's cursor,
reorder what is shown or pass for another field: a name holding a newline and
`seq=9999 PASS part=A-17` must not print a PASS line for an ERROR verdict. Every text output
goes through this module, so there is one rule to read and to test:

- `printable`: one line that shows exactly what the text holds. What Python's `repr`
  escapes (control characters, DEL, line and paragraph separators, format characters such
  as bidi overrides, lone surrogates that `surrogateescape` made of bytes that are not
  UTF-8) is written as `repr` writes it (`\\n`, `\\x1b`, `\\u202e`, `\\udcff`), and a
  backslash as two, so every shown name reads back unambiguously.
- `logfmt_value`: a logfmt value, quoted when it holds a space, a quote or `=`.
- `csv_cell`: spreadsheets run a cell that starts with `=`, `+`, `-` or `@` as a formula
  (OWASP "CSV injection"); such a text cell gets a leading `'`. Numbers stay numbers.
- `html_text` and `markdown_code` for the evaluation reports.

Structured outputs (the JSON of a verdict, the journal) keep the text as it is: there it is a
value, not a line, and consumers need the real name.

Example:
    >>> print(printable("part\\nseq=9999 PASS part=A-17"))
    part\\nseq=9999 PASS part=A-17
    >>> logfmt_value("/in/a b.png"), logfmt_value("/in/ab.png")
    ('"/in/a b.png"', '/in/ab.png')
    >>> csv_cell("=HYPERLINK(1)"), csv_cell(-2.5)
    ("'=HYPERLINK(1)", -2.5)
"""

from __future__ import annotations

import html

_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_FORMULA_STARTS = ("=", "+", "-", "@")
_LOGFMT_NEEDS_QUOTES = (" ", '"', "=")


def printable(text: object) -> str:
    """`text` on one line, every character a reader could be misled by escaped as `repr` does.

    Example:
        >>> printable("caf\\u00e9 \\x1b[31mred\\r\\u202e"), printable(b"\\xff".decode("utf-8", "surrogateescape"))
        ('café \\\\x1b[31mred\\\\r\\\\u202e', '\\\\udcff')
    """
    shown = text if isinstance(text, str) else str(text)
    if shown.isprintable() and "\\" not in shown:
        return shown
    return "".join(_escape(ch) if ch == "\\" or not ch.isprintable() else ch for ch in shown)


def logfmt_value(text: object, *, always_quote: bool = False) -> str:
    """`printable(text)`, in double quotes (inner `"` as `\\"`) when it would not read as one value.

    Example:
        >>> logfmt_value('say "hi"'), logfmt_value(""), logfmt_value("x", always_quote=True)
        ('"say \\\\"hi\\\\""', '""', '"x"')
    """
    shown = printable(text)
    if always_quote or not shown or any(mark in shown for mark in _LOGFMT_NEEDS_QUOTES):
        return '"' + shown.replace('"', '\\"') + '"'
    return shown


def csv_cell(value: object) -> object:
    """A CSV cell: text is made printable and defused as a formula; anything else is kept.

    Example:
        >>> csv_cell("@SUM(A1)"), csv_cell("pore"), csv_cell(7)
        ("'@SUM(A1)", 'pore', 7)
    """
    if not isinstance(value, str):
        return value
    shown = printable(value)
    return "'" + shown if shown.startswith(_FORMULA_STARTS) else shown


def html_text(text: object) -> str:
    """Printable text for HTML content or a quoted attribute.

    Example:
        >>> html_text('<b>"x"\\n</b>')
        '&lt;b&gt;&quot;x&quot;\\\\n&lt;/b&gt;'
    """
    return html.escape(printable(text), quote=True)


def markdown_code(text: object) -> str:
    """Printable text as a Markdown code span, fenced with more backticks than it holds.

    Example:
        >>> markdown_code("data/in"), markdown_code("a`b")
        ('`data/in`', '`` a`b ``')
    """
    shown = printable(text)
    longest = run = 0
    for ch in shown:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    padding = " " if longest else ""
    return f"{fence}{padding}{shown}{padding}{fence}"


def _escape(ch: str) -> str:
    short = _SHORT_ESCAPES.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
