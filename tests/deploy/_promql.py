"""Just enough PromQL reading to say which metrics an expression names, and with which labels.

Not a parser: a tokenizer plus the few rules that tell a metric name from everything else that
looks like an identifier (functions, keywords, aggregation modifiers, label names). Strings, range
and subquery brackets (Grafana's ``[$__rate_interval]`` included) are skipped whole. Anything it
does not recognise raises ``ValueError``, so that a test fails rather than reading less than is
there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Selector", "Usage", "read", "template_metric"]

# Words that look like identifiers and are not metric names. Functions are told apart by the "("
# that follows them, so they need no list; aggregations such as `sum` as well.
KEYWORDS = frozenset({"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"})
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
                (?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=,(){}@])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Selector:
    """One vector selector: ``name{label="..."}``; ``labels`` are the matchers' label names."""

    name: str
    labels: frozenset[str]


@dataclass
class Usage:
    """What an expression refers to."""

    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    """Label names of ``by``/``without``/``on``/``ignoring``/``group_*`` clauses."""

    @property
    def metrics(self) -> set[str]:
        return {s.name for s in self.selectors}


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read {expr[pos : pos + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "ws":
            out.append((kind, match.group()))
        pos = match.end()
    return out


def _label_list(tokens: list[tuple[str, str]], i: int, close: str) -> tuple[list[str], int]:
    """The label names of ``(a, b)`` or ``{a="x", b=~"y"}`` starting at ``tokens[i]`` (the opening
    bracket); returns them and the index after the closing bracket."""
    names: list[str] = []
    i += 1
    while i < len(tokens) and tokens[i][1] != close:
        kind, text = tokens[i]
        if kind == "ident":
            names.append(text)
        elif text not in (",", "=", "!=", "=~", "!~") and kind != "string":
            raise ValueError(f"unexpected {text!r} in a label list")
        i += 1
    if i == len(tokens):
        raise ValueError(f"unclosed label list, expected {close!r}")
    return names, i + 1


def read(expr: str) -> Usage:
    """The selectors and grouping labels of a PromQL expression.

    Raises:
        ValueError: something this reader does not handle, such as a selector without a metric
            name (``{__name__=~"..."}``).
    """
    tokens = _tokens(expr)
    usage = Usage()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in GROUPING:
            if following == "(":
                names, i = _label_list(tokens, i + 1, ")")
                usage.grouping.update(names)
            else:  # `group_left` without a label list
                i += 1
            continue
        if kind == "ident" and following in ("(", "by", "without"):  # function, aggregation
            i += 1
            continue
        if kind == "ident" and text.lower() in KEYWORDS:
            i += 1
            continue
        if kind == "ident":
            labels: list[str] = []
            i += 1
            if following == "{":
                labels, i = _label_list(tokens, i, "}")
            usage.selectors.append(Selector(text, frozenset(labels)))
            continue
        if text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        i += 1
    return usage


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.+),\s*(?P<label>\w+)\s*\)\s*$")


def template_metric(query: str) -> tuple[Usage, str]:
    """A Grafana ``label_values(selector, label)`` variable query: what the selector names, and
    the label whose values it lists.

    Raises:
        ValueError: not a ``label_values`` query with a selector.
    """
    match = _LABEL_VALUES.match(query)
    if match is None:
        raise ValueError(f"not a label_values(metric, label) query: {query!r}")
    return read(match["selector"]), match["label"]
