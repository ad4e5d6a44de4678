"""Safe arithmetic expressions for model files (covariate models, micro-constants).

A model file writes ``CL = "4.5 * (CRCL/120)**0.8 * 0.7**DIAL * exp(ETA_CL)"``.  The text is parsed
with :mod:`ast` and only numbers, names, ``+ - * / **``, unary minus and the functions ``exp``,
``log`` (natural), ``sqrt``, ``min``, ``max`` and ``abs`` are accepted, so a model file cannot run
code.  Expressions are bounded (:data:`MAX_CHARS` characters, :data:`MAX_NODES` syntax nodes,
:data:`MAX_DEPTH` levels of nesting) so that no text can exhaust the interpreter's stack or memory,
and every number must be a finite double.  They evaluate element-wise on numpy arrays (a batch of
random effects at once) in IEEE arithmetic: ``5 / 0`` or ``(-8) ** 0.5`` give a non-finite value
that :meth:`Expression.evaluate` reports as an :class:`ExpressionError` naming the field, never a
Python exception from the arithmetic.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medtwin.errors import ValidationError

__all__ = [
    "MAX_CHARS",
    "MAX_DEPTH",
    "MAX_NODES",
    "Expression",
    "ExpressionError",
    "compile_expression",
    "finite_number",
]

#: Limits on one expression: far above any published covariate model, far below what hurts.
MAX_CHARS = 1000
MAX_NODES = 400
MAX_DEPTH = 100

Value = npt.NDArray[np.float64] | np.float64 | float
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
_FUNCTION_NAMES = "exp, log (natural), sqrt, abs, min, max"
_ALLOWED = "numbers, names, + - * / **, exp, log, sqrt, abs, min, max"
# What people write from other languages, and what to write instead.
_INSTEAD_OPERATORS: dict[type[ast.operator], str] = {
    ast.BitXor: "'^' is not a power here: use ** (e.g. (WT / 70)**0.75)",
    ast.FloorDiv: "'//' (integer division) is not allowed: write /",
    ast.Mod: "'%' is not allowed",
    ast.MatMult: "'@' is not allowed",
    ast.BitAnd: "'&' is not allowed",
    ast.BitOr: "'|' is not allowed",
    ast.LShift: "'<<' is not allowed",
    ast.RShift: "'>>' is not allowed",
}
_INSTEAD_FUNCTIONS = {
    "ln": "log (the natural logarithm)",
    "log10": "log(x) / log(10)",
    "log2": "log(x) / log(2)",
    "pow": "x**y",
    "power": "x**y",
    "exponent": "exp",
    "minimum": "min",
    "maximum": "max",
    "fabs": "abs",
}


class ExpressionError(ValidationError):
    """An expression that is refused (syntax, size, a number out of range) or gives a non-finite value."""


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled expression: its *text*, the *names* it reads, where it comes from and an evaluator."""

    text: str
    names: frozenset[str]
    _evaluate: _Evaluator
    where: str = "expression"

    def __call__(self, env: Mapping[str, Value]) -> Value:
        """The raw value for the variables in *env* (floats or numpy arrays), unchecked: the fast path of a
        caller that checks the results itself inside ``np.errstate``; :meth:`evaluate` checks and explains."""
        return self._evaluate(env)

    def evaluate(self, env: Mapping[str, Value]) -> Value:
        """The value for the variables in *env*; a non-finite result (division by zero, overflow, the
        root of a negative number ...) is an :class:`ExpressionError` naming the field and the inputs."""
        with np.errstate(all="ignore"):
            try:
                value = self._evaluate(env)
            except (ArithmeticError, ValueError, TypeError) as exc:  # defensive: numpy scalars should not raise
                raise ExpressionError(f"{self.where}: {self.text!r} cannot be evaluated: {exc}") from None
        if not np.all(np.isfinite(value)):
            used = ", ".join(f"{n}={_show(env[n])}" for n in sorted(self.names) if n in env)
            raise ExpressionError(
                f"{self.where}: {self.text!r} is not a finite number"
                + (f" for {used}" if used else "")
                + " (division by zero, overflow, or log/sqrt/fractional power of a negative number)"
            )
        return value


def _show(value: Value) -> str:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return f"{float(arr):.6g}"
    bad = ~np.isfinite(arr)
    if arr.size == 1:
        return f"{float(arr.reshape(-1)[0]):.6g}"
    return f"[{arr.size} values, {int(bad.sum())} non-finite, range {np.nanmin(arr):.4g}..{np.nanmax(arr):.4g}]"


def finite_number(value: object, where: str) -> float:
    """*value* (an int or a float, not a bool or a string) as a finite double, else an :class:`ExpressionError`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExpressionError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer literal of hundreds of digits
        raise ExpressionError(f"{where}: the number {str(value)[:20]}... is too large for a double") from None
    if not math.isfinite(number):
        raise ExpressionError(f"{where}: expected a finite number, got {value!r}")
    return number


def _constant(node: ast.Constant, where: str) -> _Evaluator:
    const = np.float64(finite_number(node.value, where))  # IEEE arithmetic: 5 / 0 gives inf, refused by evaluate
    return lambda env: const


def _build(node: ast.AST, names: set[str], where: str) -> _Evaluator:
    if isinstance(node, ast.Expression):
        return _build(node.body, names, where)
    if isinstance(node, ast.Constant):
        return _constant(node, where)
    if isinstance(node, ast.Name):
        name = node.id
        names.add(name)
        return lambda env: env[name]
    if isinstance(node, ast.BinOp):
        if type(node.op) in _INSTEAD_OPERATORS:
            raise ExpressionError(f"{where}: {_INSTEAD_OPERATORS[type(node.op)]}")
        op = _BINARY[type(node.op)]
        left, right = _build(node.left, names, where), _build(node.right, names, where)
        return lambda env: op(left(env), right(env))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _build(node.operand, names, where)
        if isinstance(node.op, ast.USub):
            return lambda env: -inner(env)
        return inner
    if isinstance(node, ast.Call):
        return _call(node, names, where)
    raise ExpressionError(f"{where}: {_describe(node)} is not allowed; expressions use {_ALLOWED}")


def _call(node: ast.Call, names: set[str], where: str) -> _Evaluator:
    if not isinstance(node.func, ast.Name):
        raise ExpressionError(f"{where}: {_describe(node.func)} cannot be called; functions: {_FUNCTION_NAMES}")
    fname = node.func.id
    if fname not in _FUNCTIONS:
        hint = _INSTEAD_FUNCTIONS.get(fname.lower())
        raise ExpressionError(
            f"{where}: unknown function {fname}()" + (f"; use {hint}" if hint else "")
            + f"; functions: {_FUNCTION_NAMES}"
        )  # fmt: skip
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise ExpressionError(f"{where}: {fname}() takes plain arguments only")
    expected = 2 if fname in ("min", "max") else 1
    if len(node.args) != expected:
        raise ExpressionError(f"{where}: {fname}() takes {expected} argument(s), got {len(node.args)}")
    fn = _FUNCTIONS[fname]
    args = [_build(a, names, where) for a in node.args]
    if expected == 1:
        only = args[0]
        return lambda env: fn(only(env))
    first, second = args
    return lambda env: fn(first(env), second(env))


def _describe(node: ast.AST) -> str:
    """A short, readable name for a refused piece of syntax (never a syntax-tree dump)."""
    kinds = {
        ast.Attribute: "attribute access",
        ast.Subscript: "indexing",
        ast.Compare: "a comparison",
        ast.BoolOp: "and/or",
        ast.IfExp: "if/else",
        ast.Lambda: "lambda",
        ast.List: "a list",
        ast.Tuple: "a tuple",
        ast.Dict: "a dict",
        ast.Set: "a set",
        ast.JoinedStr: "an f-string",
        ast.NamedExpr: "':='",
    }
    label = next((text for kind, text in kinds.items() if isinstance(node, kind)), type(node).__name__)
    if isinstance(node, ast.UnaryOp):
        label = "'not'" if isinstance(node.op, ast.Not) else "'~'"
    try:
        snippet = ast.unparse(node)
    except Exception:  # pragma: no cover - unparse handles every node ast.parse makes
        snippet = ""
    return f"{label} ({snippet[:40]!r})" if snippet else label


def _check_size(tree: ast.AST, where: str) -> None:
    """Refuse trees over :data:`MAX_NODES` nodes, then over :data:`MAX_DEPTH` deep (iteratively: no recursion)."""
    for count, _ in enumerate(ast.walk(tree), start=1):
        if count > MAX_NODES:
            raise ExpressionError(f"{where}: expression too large (over {MAX_NODES} terms); split it into parameters")
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ExpressionError(
                f"{where}: expression nested too deeply (over {MAX_DEPTH} levels); split it into parameters"
            )
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def compile_expression(text: object, *, where: str = "expression") -> Expression:
    """Parse *text* into an :class:`Expression`; *where* names it in error messages (file and field)."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ExpressionError(f"{where}: expected an expression string, got {text!r}")
    source = str(text)
    if len(source) > MAX_CHARS:
        raise ExpressionError(f"{where}: expression too long ({len(source)} characters, at most {MAX_CHARS})")
    if not source.strip():
        raise ExpressionError(f"{where}: empty expression")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        hint = "; use ** for powers" if "^" in source else ""
        raise ExpressionError(f"{where}: cannot parse {source!r}: {exc.msg}{hint}") from None
    except (RecursionError, MemoryError, ValueError):  # the parser's own limits (nesting, huge literals)
        raise ExpressionError(f"{where}: expression too complex to parse; split it into parameters") from None
    _check_size(tree, where)
    names: set[str] = set()
    evaluator = _build(tree, names, where)
    return Expression(text=source, names=frozenset(names), _evaluate=evaluator, where=where)
