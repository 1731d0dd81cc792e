"""`calculate_output` of a multi grader: arithmetic over the sub-graders' rewards, read with
Python's parser and evaluated node by node. Only numbers, the sub-graders' names, + - * / ^
(power, as OpenAI's formulas write it; ** too), unary minus, parentheses and OpenAI's functions
min max abs floor ceil exp sqrt log are allowed; nothing is ever passed to eval()."""

from __future__ import annotations

import ast
import math
import operator

MAX_LENGTH = 2000
FUNCTIONS = {"min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
             "sqrt": math.sqrt, "log": math.log}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow, ast.BitXor: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class FormulaError(ValueError):
    """The formula cannot be read, names something unknown, or cannot be computed (x/0, log(-1))."""


def parse(text: str, names: set[str] | frozenset[str]) -> ast.Expression:
    """Parse and check `text` once: every node allowed, every name one of `names`."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("the formula is empty")
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"the formula is {len(text)} characters; at most {MAX_LENGTH}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"cannot parse the formula at column {exc.offset}: {exc.msg}") from None
    for node in ast.walk(tree):
        _allowed(node, names)
    return tree


def _allowed(node: ast.AST, names) -> None:
    if isinstance(node, (ast.Expression, ast.Load, *(_BINARY), *(_UNARY))):
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise FormulaError(f"the operator {_op(node.op)} is not allowed; use + - * / ^")
        return
    if isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise FormulaError(f"the operator {_op(node.op)} is not allowed")
        return
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise FormulaError(f"{node.value!r} is not a number")
        return
    if isinstance(node, ast.Name):
        if node.id not in names and node.id not in FUNCTIONS:
            known = ", ".join(sorted(names)) or "none"
            raise FormulaError(f"unknown name {node.id!r}; the graders are: {known}")
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
            raise FormulaError(f"only the functions {', '.join(FUNCTIONS)} can be called")
        if not node.args:
            raise FormulaError(f"{node.func.id}() needs an argument")
        return
    raise FormulaError(f"{type(node).__name__.lower()} is not allowed in a formula")


def _op(op) -> str:
    return type(op).__name__


def evaluate(tree: ast.Expression, values: dict[str, float]) -> float:
    """The formula's value with each name bound to its reward (a float, finite)."""
    try:
        out = float(_eval(tree.body, values))
    except (ZeroDivisionError, OverflowError, ValueError, TypeError) as exc:
        raise FormulaError(f"the formula cannot be computed: {exc}") from None
    if not math.isfinite(out):
        raise FormulaError("the formula's value is not a finite number")
    return out


def _eval(node: ast.AST, values: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(values[node.id])
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, values), _eval(node.right, values)
        if isinstance(node.op, (ast.Pow, ast.BitXor)) and abs(right) > 1024:
            raise OverflowError("an exponent above 1024")  # floats stay small and fast
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, values))
    args = [_eval(a, values) for a in node.args]
    name = node.func.id
    if name not in ("min", "max") and len(args) != 1:
        raise TypeError(f"{name}() takes one argument")
    return FUNCTIONS[name](*args)
