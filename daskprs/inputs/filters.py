"""The ``filter`` expression language of MLTable: a whitelisted parser (:func:`parse_filter`,
nothing is ever evaluated by Python) and its evaluation on a DataFrame (:func:`filter_mask`).
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported where rows are filtered: parse_filter runs in the
    import pandas as pd  # driver, which a file-list job never gives pandas (issue 23)

__all__ = ["filter_mask", "is_textual", "parse_filter"]


@dataclass(frozen=True)
class _Col:
    name: str


@dataclass(frozen=True)
class _Lit:
    value: Any


@dataclass(frozen=True)
class _Op:
    op: str
    args: tuple


_CMP_OPS = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_BIN_OPS = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.BitAnd: "and",
    ast.BitOr: "or",
}
_METHODS = {"startswith": 1, "endswith": 1, "contains": 1, "isnull": 0, "notnull": 0}
_MAX_FILTER = 10_000


@functools.lru_cache(maxsize=256)
def parse_filter(text: str) -> Any:
    """Parse a filter expression into a small tree, accepting only a whitelisted grammar.

    Allowed: ``col("name")``; string, number, bool and None literals; lists/tuples of
    literals; comparisons (``== != < <= > >= in not in``, chained); ``and``, ``or``, ``not``
    (and ``& | ~``); ``+ - * / // %``; the methods ``startswith``, ``endswith``, ``contains``,
    ``isnull``, ``notnull`` on a column. Nothing is evaluated by Python.

    Raises
    ------
    ValueError
        The expression uses anything else; the message names it.
    """
    if len(text) > _MAX_FILTER:
        raise ValueError(f"filter expression longer than {_MAX_FILTER} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"filter {text!r} is not a valid expression: {err.msg}") from err
    return _convert(tree.body, text)


def _convert(node: ast.AST, text: str) -> Any:
    def bad(what: str) -> ValueError:
        return ValueError(
            f'filter {text!r}: {what} is not allowed; use col("name"), literals, comparisons, '
            f"and/or/not, arithmetic and .startswith/.endswith/.contains/.isnull/.notnull"
        )

    if isinstance(node, ast.Constant):
        if isinstance(node.value, str | int | float | bool) or node.value is None:
            return _Lit(node.value)
        raise bad(f"the literal {node.value!r}")
    if isinstance(node, ast.List | ast.Tuple):
        values = [_convert(e, text) for e in node.elts]
        if not all(isinstance(v, _Lit) for v in values):
            raise bad("a list of non-literals")
        return _Lit(tuple(v.value for v in values))
    if isinstance(node, ast.BoolOp):
        bool_op = "and" if isinstance(node.op, ast.And) else "or"
        return _Op(bool_op, tuple(_convert(v, text) for v in node.values))
    if isinstance(node, ast.UnaryOp):
        operand = _convert(node.operand, text)
        if isinstance(node.op, ast.Not | ast.Invert):
            return _Op("not", (operand,))
        if isinstance(node.op, ast.USub):
            if isinstance(operand, _Lit) and isinstance(operand.value, int | float):
                return _Lit(-operand.value)
            return _Op("neg", (operand,))
        if isinstance(node.op, ast.UAdd):
            return operand
        raise bad(type(node.op).__name__)
    if isinstance(node, ast.BinOp):
        op = _BIN_OPS.get(type(node.op))
        if op is None:
            raise bad(f"the operator {type(node.op).__name__}")
        return _Op(op, (_convert(node.left, text), _convert(node.right, text)))
    if isinstance(node, ast.Compare):
        parts = []
        left = _convert(node.left, text)
        for op_node, right_node in zip(node.ops, node.comparators, strict=True):
            op = _CMP_OPS.get(type(op_node))
            if op is None:
                raise bad(f"the comparison {type(op_node).__name__}")
            right = _convert(right_node, text)
            parts.append(_Op(op, (left, right)))
            left = right
        return parts[0] if len(parts) == 1 else _Op("and", tuple(parts))
    if isinstance(node, ast.Call):
        if node.keywords:
            raise bad("a keyword argument")
        func = node.func
        if isinstance(func, ast.Name) and func.id == "col":
            if len(node.args) != 1 or not (
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            ):
                raise bad('col() without one string argument (write col("name"))')
            return _Col(node.args[0].value)
        if isinstance(func, ast.Attribute) and func.attr in _METHODS:
            if len(node.args) != _METHODS[func.attr]:
                raise bad(f".{func.attr}() with {len(node.args)} argument(s)")
            target = _convert(func.value, text)
            args = tuple(_convert(a, text) for a in node.args)
            if not all(isinstance(a, _Lit) for a in args):
                raise bad(f"a non-literal argument to .{func.attr}()")
            return _Op(func.attr, (target, *args))
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "a call")
        raise bad(f"calling {name!r}")
    if isinstance(node, ast.Name):
        raise bad(f"the name {node.id!r} (write col({node.id!r}) for a column)")
    raise bad(f"the syntax {type(node).__name__}")


def _evaluate(node: Any, df: pd.DataFrame) -> Any:
    import pandas as pd

    if isinstance(node, _Lit):
        return node.value
    if isinstance(node, _Col):
        if node.name not in df.columns:
            raise KeyError(
                f"filter: no column {node.name!r}; the columns are {list(map(str, df.columns))}"
            )
        return df[node.name]
    op, args = node.op, node.args
    if op in ("and", "or"):
        values = [_as_mask(_evaluate(a, df), df) for a in args]
        out = values[0]
        for v in values[1:]:
            out = (out & v) if op == "and" else (out | v)
        return out
    if op == "not":
        return ~_as_mask(_evaluate(args[0], df), df)
    if op == "neg":
        return -_numeric(_evaluate(args[0], df))
    if op in ("startswith", "endswith", "contains"):
        series = _evaluate(args[0], df)
        if not isinstance(series, pd.Series):
            raise ValueError(f"filter: .{op}() needs a column")
        s = series.astype("str")
        if op == "contains":
            return s.str.contains(args[1].value, regex=False, na=False)
        return getattr(s.str, op)(args[1].value, na=False)
    if op in ("isnull", "notnull"):
        series = _evaluate(args[0], df)
        return series.isna() if op == "isnull" else series.notna()
    left, right = _evaluate(args[0], df), _evaluate(args[1], df)
    if op in ("in", "not in"):
        if not isinstance(right, tuple):
            raise ValueError("filter: 'in' needs a list of literals on its right")
        result = left.isin(right) if isinstance(left, pd.Series) else left in right
        return ~result if op == "not in" else result
    left, right = _coerce_pair(left, right)
    if op in ("==", "!=", "<", "<=", ">", ">="):
        fn = {
            "==": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
        }[op]
        return fn(left, right)
    fn = {
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
        "/": lambda a, b: a / b,
        "//": lambda a, b: a // b,
        "%": lambda a, b: a % b,
    }[op]
    return fn(left, right)


def is_textual(s: Any) -> bool:
    import pandas as pd

    return isinstance(s, pd.Series) and (pd.api.types.is_string_dtype(s.dtype) or s.dtype == object)


def _numeric(v: Any) -> Any:
    if is_textual(v):
        import pandas as pd

        return pd.to_numeric(v, errors="coerce")
    return v


def _coerce_pair(left: Any, right: Any) -> tuple[Any, Any]:
    """A string column compared with a number is converted to numbers first."""
    import pandas as pd

    def is_num(v: Any) -> bool:
        return (isinstance(v, int | float) and not isinstance(v, bool)) or (
            isinstance(v, pd.Series) and pd.api.types.is_numeric_dtype(v.dtype)
        )

    if is_num(right) and is_textual(left):
        left = pd.to_numeric(left, errors="coerce")
    elif is_num(left) and is_textual(right):
        right = pd.to_numeric(right, errors="coerce")
    return left, right


def _as_mask(value: Any, df: pd.DataFrame) -> pd.Series:
    import pandas as pd

    if isinstance(value, pd.Series):
        if value.dtype != bool:
            value = value.astype("boolean").fillna(False).astype(bool)
        return value
    return pd.Series(bool(value), index=df.index)


def filter_mask(text: str, df: pd.DataFrame) -> pd.Series:
    """The boolean mask of the rows of ``df`` the filter expression ``text`` keeps."""
    return _as_mask(_evaluate(parse_filter(text), df), df)
