"""Safe arithmetic expressions for model files (covariate models, micro-constants).

A model file writes ``CL = "4.5 * (CRCL/120)**0.8 * 0.7**DIAL * exp(ETA_CL)"``.  The text is parsed
with :mod:`ast` and only numbers, names, ``+ - * / **``, unary minus and the functions ``exp``,
``log``, ``sqrt``, ``min``, ``max`` and ``abs`` are accepted, so a model file cannot run code.
Expressions evaluate element-wise on numpy arrays (a batch of random effects at once).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medtwin.errors import ValidationError

__all__ = ["Expression", "compile_expression"]

Value = npt.NDArray[np.float64] | float
_Evaluator = Callable[[Mapping[str, Value]], Value]

_BINARY: dict[type[ast.operator], Callable[[Value, Value], Value]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_FUNCTIONS: dict[str, Callable[..., Value]] = {
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "min": np.minimum,
    "max": np.maximum,
}


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled expression: its *text*, the *names* it reads and an evaluator."""

    text: str
    names: frozenset[str]
    _evaluate: _Evaluator

    def __call__(self, env: Mapping[str, Value]) -> Value:
        """Evaluate with the variables in *env* (floats or numpy arrays)."""
        return self._evaluate(env)


def _build(node: ast.AST, names: set[str], where: str) -> _Evaluator:
    if isinstance(node, ast.Expression):
        return _build(node.body, names, where)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):
            raise ValidationError(f"{where}: booleans are not allowed in expressions")
        const = float(node.value)
        return lambda env: const
    if isinstance(node, ast.Name):
        name = node.id
        names.add(name)
        return lambda env: env[name]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op = _BINARY[type(node.op)]
        left, right = _build(node.left, names, where), _build(node.right, names, where)
        return lambda env: op(left(env), right(env))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _build(node.operand, names, where)
        if isinstance(node.op, ast.USub):
            return lambda env: -inner(env)
        return inner
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        fn = _FUNCTIONS[node.func.id]
        args = [_build(a, names, where) for a in node.args]
        expected = 2 if node.func.id in ("min", "max") else 1
        if len(args) != expected:
            raise ValidationError(f"{where}: {node.func.id}() takes {expected} argument(s)")
        return lambda env: fn(*(a(env) for a in args))
    raise ValidationError(
        f"{where}: unsupported syntax {ast.dump(node)[:60]!r}; allowed: numbers, names, "
        "+ - * / **, exp, log, sqrt, abs, min, max"
    )


def compile_expression(text: str, *, where: str = "expression") -> Expression:
    """Parse *text* into an :class:`Expression`; *where* names it in error messages."""
    if not isinstance(text, str | int | float) or isinstance(text, bool):
        raise ValidationError(f"{where}: expected an expression string, got {text!r}")
    source = str(text)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ValidationError(f"{where}: cannot parse {source!r}: {exc.msg}") from exc
    names: set[str] = set()
    evaluator = _build(tree, names, where)
    return Expression(text=source, names=frozenset(names), _evaluate=evaluator)
