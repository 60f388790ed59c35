"""Turn a man page's roff source into plain text, well enough for a language-model corpus (not a formatter).

Requests (lines starting with `.` or `'`) are dropped, except those that carry text: headings (`.SH`, `.SS`), font
macros (`.B`, `.I`, `.BR`, ...), `.IP` tags and the common mdoc macros (`.Sh`, `.Nm`, `.Fl`, `.Ar`, ...), which
keep their words. Macro definitions (`.de` ... `..`), ignored blocks (`.ig`) and tbl format lines are skipped.
Escapes: font and size changes are removed, named characters (`\\(em`, `\\[u00E9]`, accents like `\\('e`) become
Unicode, everything unknown is dropped. A page that only redirects to another (`.so`) gives None.
"""

from __future__ import annotations

import re
import unicodedata

_SPECIAL = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "bu": "\u2022", "aq": "'", "dq": '"', "lq": "\u201c",
    "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122", "mu": "\u00d7",
    "di": "\u00f7", "pl": "+", "eq": "=", "<=": "\u2264", ">=": "\u2265", "!=": "\u2260", "->": "\u2192",
    "<-": "\u2190", "de": "\u00b0", "rs": "\\", "ti": "~", "ha": "^", "ga": "`", "aa": "\u00b4", "sl": "/",
    "ba": "|", "br": "|", "or": "|", "lh": "\u261c", "rh": "\u261e", "ss": "\u00df", "oe": "\u0153",
    "OE": "\u0152", "ae": "\u00e6", "AE": "\u00c6", "/o": "\u00f8", "/O": "\u00d8", "/l": "\u0142",
    "/L": "\u0141", "Fo": "\u00ab", "Fc": "\u00bb", "fo": "\u2039", "fc": "\u203a", "Eu": "\u20ac",
    "eu": "\u20ac", "ct": "\u00a2", "Po": "\u00a3", "Ye": "\u00a5", "sc": "\u00a7", "ps": "\u00b6",
    "12": "\u00bd", "14": "\u00bc", "34": "\u00be", "+-": "\u00b1", "fm": "\u2032", "sq": "\u25a1",
    "at": "@", "sh": "#", "Do": "$", "bq": "\u201a", "Bq": "\u201e", "char92": "\\", "char46": ".",
    "char39": "'", "char34": '"', "dg": "\u2020", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "\u27e8",
    "ra": "\u27e9", "an": "-", "ul": "_", "ru": "_", "pc": "\u00b7", "tno": "~", "ua": "\u2191", "da": "\u2193",
}
_ACCENTS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", ":": "\u0308", ",": "\u0327", "~": "\u0303",
            "o": "\u030a", "v": "\u030c"}
_GREEK = dict(zip("abgdezyhiklmncoprstufxqw", "\u03b1\u03b2\u03b3\u03b4\u03b5\u03b6\u03b7\u03b8\u03b9\u03ba\u03bb"
                  "\u03bc\u03bd\u03be\u03bf\u03c0\u03c1\u03c3\u03c4\u03c5\u03c6\u03c7\u03c8\u03c9"))
# pod2man's and docbook's string registers (\*(--, \*(L" ...); other strings are dropped.
_STRINGS = {"--": "\u2014", "PI": "\u03c0", 'L"': '"', 'R"': '"', "C+": "C++", "Aq": "'", "lq": "\u201c",
            "rq": "\u201d", "R": "\u00ae", "Tm": "\u2122"}

_ESCAPE = re.compile(r"""\\(?:
    (?P<font>[fF](?:\[[^\]]*\]|\(..|.))
  | (?P<size>s[+-]?(?:\(\d\d|\[[^\]]*\]|'[^']*'|\d))
  | \((?P<two>..)
  | \[(?P<named>[^\]]*)\]
  | \*(?:\((?P<str2>..)|\[(?P<strn>[^\]]*)\]|(?P<str1>.))
  | (?P<reg>n[+-]?(?:\(..|\[[^\]]*\]|.))
  | (?P<quoted>[hvwlLNDXbZoxRSAB]'[^']*')
  | (?P<one>.)
  | (?P<eol>$)
)""", re.VERBOSE)
_SINGLE = {"e": "\\", "\\": "\\", "-": "-", "'": "\u00b4", "`": "`", ".": ".", " ": " ", "~": " ", "0": " ",
           "t": "\t", "_": "_", "E": "\\", "(": "("}

_HEADINGS = {"SH", "SS", "Sh", "Ss"}
_FONT_WORDS = {"B", "I", "SM", "SB", "UR", "MT"}
_FONT_ALTERNATING = {"BI", "BR", "IB", "IR", "RB", "RI"}
_BLOCKS = {"de", "de1", "am", "am1", "ig"}
# mdoc macros whose name is dropped and whose arguments are kept as words.
_MDOC_WORDS = {"Nm", "Nd", "Ar", "Op", "Oo", "Oc", "Cm", "Ic", "Pa", "Va", "Ev", "Fn", "Fa", "Ft", "Fd", "Fo",
               "Fc", "Xr", "Em", "Sy", "Li", "Dq", "Do", "Dc", "Qq", "Qo", "Qc", "Sq", "So", "Sc", "Pq", "Po",
               "Pc", "Aq", "Ao", "Ac", "Bq", "Bo", "Bc", "Ql", "Dv", "Er", "It", "Ns", "No", "An", "Lk", "Mt",
               "Ad", "Cd", "Ms", "Tn", "Ux", "Bx", "At", "Nx", "Fx", "Ox", "Dl", "D1", "Xo", "Xc", "Pf", "Ta",
               "Vt", "Lb", "In", "Ot", "St", "Sx", "Rs", "Re", "%A", "%T", "%B", "%J", "%D", "%O", "%N", "%V"}


def _named(name: str) -> str:
    if name in _SPECIAL:
        return _SPECIAL[name]
    if len(name) == 2 and name[0] == "*":
        g = _GREEK.get(name[1].lower())
        return (g.upper() if name[1].isupper() else g) if g else ""
    if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    if re.fullmatch(r"u[0-9A-Fa-f]{4,6}(_[0-9A-Fa-f]{4,6})*", name):
        try:
            return unicodedata.normalize("NFC", "".join(chr(int(p.lstrip("u"), 16)) for p in name.split("_")))
        except (ValueError, OverflowError):
            return ""
    return ""


def _escape(m: re.Match) -> str:
    g = m.lastgroup
    if g in ("two", "named"):
        return _named(m.group(g))
    if g in ("str2", "strn", "str1"):
        return _STRINGS.get(m.group(g), "")
    if g == "one":
        return _SINGLE.get(m.group(g), "")
    return ""  # fonts, sizes, registers, motions, widths, end of line


def unescape(text: str) -> str:
    """Replace roff escapes in one line of text; `\\"` starts a comment that runs to the end of the line."""
    out, i = [], 0
    while True:
        j = text.find("\\", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        if text.startswith('\\"', j) or text.startswith('\\#', j):
            break
        m = _ESCAPE.match(text, j)
        out.append(_escape(m))
        i = m.end() if m.end() > j else j + 1
    return "".join(out)


def split_args(args: str) -> list[str]:
    """A request's arguments: blank-separated words, `"double quoted"` ones with `""` for a literal quote."""
    words, i, n = [], 0, len(args)
    while i < n:
        while i < n and args[i] in " \t":
            i += 1
        if i >= n:
            break
        buf = []
        if args[i] == '"':
            i += 1
            while i < n:
                if args[i] == '"':
                    if args.startswith('""', i):
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                if args[i] == "\\" and i + 1 < n:
                    buf.append(args[i:i + 2])
                    i += 2
                    continue
                buf.append(args[i])
                i += 1
        else:
            while i < n and args[i] not in " \t":
                if args[i] == "\\" and i + 1 < n:
                    buf.append(args[i:i + 2])
                    i += 2
                    continue
                buf.append(args[i])
                i += 1
        words.append("".join(buf))
    return words


def _mdoc_line(words: list[str]) -> str:
    out, flag = [], False
    for w in words:
        if w == "Fl":
            flag = True
            continue
        if w in _MDOC_WORDS:
            continue
        out.append(("-" if flag else "") + unescape(w))
        flag = False
    if flag:
        out.append("-")
    return " ".join(out)


_REQUEST = re.compile(r"^[.'][ \t]*(\S*)[ \t]*(.*)$")


def roff_to_text(source: str) -> str | None:
    """Plain text of a man page (lines, possibly blank ones), or None when the page only redirects (`.so`)."""
    out: list[str] = []
    block_end: str | None = None  # inside .de/.ig: the line that ends it
    table_format = False  # inside .TS before the format section's closing "."
    redirect = False
    for line in source.split("\n"):
        if block_end is not None:
            if line.strip() == block_end or line.startswith(block_end + " "):
                block_end = None
            continue
        if table_format:
            table_format = not line.rstrip().endswith(".")
            continue
        if not line.startswith((".", "'")):
            out.append(unescape(line))
            continue
        m = _REQUEST.match(line)
        name, args = (m.group(1), m.group(2)) if m else ("", "")
        if name.startswith('\\"') or name.startswith("\\#") or not name:
            continue
        if name in _BLOCKS:
            words = split_args(args)
            end = words[1] if name != "ig" and len(words) > 1 else (words[0] if name == "ig" and words else "")
            block_end = "." + end if end else ".."
        elif name == "so":
            redirect = True
        elif name == "TS":
            table_format = True
        elif name in _HEADINGS or name in _FONT_WORDS:
            out.append(" ".join(unescape(w) for w in split_args(args)))
        elif name in _FONT_ALTERNATING:
            out.append("".join(unescape(w) for w in split_args(args)))
        elif name == "IP":
            words = split_args(args)
            if words:
                out.append(unescape(words[0]))
        elif name == "Fl" or name in _MDOC_WORDS:
            out.append(_mdoc_line([name] + split_args(args)))
        # every other request (.TH, .PP, .TP, .RS, .br, .sp, .nf, .if, .ds, .nr ...) carries no text
    if redirect and not any(s.strip() for s in out):
        return None
    return "\n".join(out)
