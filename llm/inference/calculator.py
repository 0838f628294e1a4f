"""The calculator a chat model calls between <|python_start|> and <|python_end|>.

The text comes from a model, so it is untrusted: it is never handed to `eval`. It is parsed with
`ast` and walked by a small interpreter that knows only numbers, the arithmetic operators and the
one string method chat fine-tuning teaches (`'strawberry'.count('r')`). Everything else — names,
calls, attributes, subscripts, comprehensions, lambdas — is refused before anything runs.

Sizes are capped so that no accepted expression can run long: the input length bounds the number of
operations, every intermediate number is bounded in magnitude, and a power is refused *before* it is
computed when its result would be out of bounds (`9**9**9` would otherwise take hours). A
cooperative deadline, checked between operations, backs this up in any thread (unlike SIGALRM).
"""

import ast
import math
import operator
import re
import time

MAX_EXPRESSION_CHARS = 512
MAX_DIGITS = 100  # |value| < 10**100 for every literal, intermediate and result
DEFAULT_TIME_LIMIT_S = 1.0

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# String literals, so that commas inside them survive the thousands-separator removal.
_STRING_LITERAL = re.compile(r"""('[^']*'|"[^"]*")""")


class Rejected(Exception):
    """The expression is outside the calculator's language or limits."""


def calculate(expression: str, time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> int | float | None:
    """The value of an arithmetic or `.count` expression, or None when it is refused or fails."""
    try:
        return _Interpreter(time.monotonic() + time_limit_s).run(expression)
    except Rejected:
        return None


def _drop_thousands_separators(expression: str) -> str:
    # Models write "1,234 * 5" as people do; outside string literals a comma has no other use here.
    pieces = _STRING_LITERAL.split(expression)
    return "".join(piece if index % 2 else piece.replace(",", "") for index, piece in enumerate(pieces))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_magnitude(value):
    if isinstance(value, float) and not math.isfinite(value):
        raise Rejected("not a finite number")
    if abs(value) >= 10**MAX_DIGITS:
        raise Rejected("number too large")
    return value


def _check_power(base, exponent) -> None:
    """Refuse a power whose result would exceed the magnitude cap, without computing it."""
    if abs(base) <= 1 or exponent <= 0:
        return  # the result's magnitude is at most max(1, |base|) or it is a fraction
    if exponent * math.log10(abs(base)) >= MAX_DIGITS:
        raise Rejected("power too large")


class _Interpreter:
    def __init__(self, deadline: float):
        self.deadline = deadline

    def run(self, expression: str):
        if len(expression) > MAX_EXPRESSION_CHARS:
            raise Rejected("expression too long")
        try:
            tree = ast.parse(_drop_thousands_separators(expression).strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            raise Rejected("not a valid expression")
        try:
            value = self.number(tree.body)
        except RecursionError:
            raise Rejected("nested too deeply")
        return value

    def number(self, node: ast.AST):
        """Evaluate a node that must produce a number."""
        if time.monotonic() > self.deadline:
            raise Rejected("time limit exceeded")
        if isinstance(node, ast.Constant) and _is_number(node.value):
            return _check_magnitude(node.value)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self.number(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.number(node.left), self.number(node.right)
            if isinstance(node.op, ast.Pow):
                _check_power(left, right)
            try:
                result = _BINARY[type(node.op)](left, right)
            except (ZeroDivisionError, OverflowError):
                raise Rejected("arithmetic error")
            if not _is_number(result):  # a negative number to a fractional power is complex
                raise Rejected("not a real number")
            return _check_magnitude(result)
        if isinstance(node, ast.Call):
            return self.count(node)
        raise Rejected(f"{type(node).__name__} is not allowed")

    def count(self, call: ast.Call) -> int:
        """'text'.count('sub'): the only call, on a string literal with one string literal argument."""
        method = call.func
        is_count = isinstance(method, ast.Attribute) and method.attr == "count"
        if not is_count or not _is_string(method.value) or call.keywords or len(call.args) != 1:
            raise Rejected("only 'literal'.count('literal') may be called")
        if not _is_string(call.args[0]):
            raise Rejected("count takes one string literal")
        return method.value.value.count(call.args[0].value)


def _is_string(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)
