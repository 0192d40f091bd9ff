"""Argument checks shared across tfprune: one Keras-style message per kind of bad value."""

from __future__ import annotations

import math
import numbers
import re

__all__: list[str] = []

# C and C++ keywords and a few names a generated C array must not shadow.
_C_RESERVED = frozenset(
    re.findall(
        r"\S+",
        """
    alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t
    char16_t char32_t class compl concept const consteval constexpr constinit const_cast
    continue co_await co_return co_yield decltype default delete do double dynamic_cast
    else enum explicit export extern false float for friend goto if inline int long main
    mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected
    public register reinterpret_cast requires restrict return short signed sizeof static
    static_assert static_cast struct switch template this thread_local throw true try
    typedef typeid typename union unsigned using virtual void volatile wchar_t while xor
    xor_eq _Alignas _Alignof _Atomic _Bool _Complex _Generic _Imaginary _Noreturn
    _Static_assert _Thread_local
""",
    )
)


def integer(name: str, value, minimum: int = 1, allow_none: bool = False) -> int | None:
    """`value` as an int >= `minimum` (NumPy integers accepted; bools and floats refused).

    Raises:
        TypeError: If `value` is not an integer (or `None` when allowed).
        ValueError: If it is below `minimum`.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Expected `{name}` to be an integer >= {minimum}"
            + (" or None" if allow_none else "")
            + f". Received: {name}={value!r} of type {type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(
            f"Expected `{name}` to be an integer >= {minimum}"
            + (" (or None)" if allow_none else "")
            + f". Received: {name}={value!r}"
        )
    return int(value)


def fraction(name: str, value, what: str = "a float in [0, 1)") -> float:
    """`value` as a finite float in [0, 1) (NumPy scalars accepted, bools refused).

    Raises:
        TypeError: If `value` is not a real number.
        ValueError: If it is NaN or outside [0, 1).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected `{name}` to be {what}. Received: {name}={value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(
            f"Expected `{name}` to be {what} (1.0 would remove everything). "
            f"Received: {name}={value!r}"
        )
    return value


def c_identifier(name: str, value) -> str:
    """`value` if it is a valid C/C++ identifier that is not a keyword or reserved name.

    Raises:
        TypeError: If `value` is not a string.
        ValueError: If it is not an identifier, is a C/C++ keyword, or is reserved (starts
            with an underscore and a capital letter, or contains a double underscore).
    """
    if not isinstance(value, str):
        raise TypeError(
            f"Expected `{name}` to be a string holding a C identifier, e.g. 'model'. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    reserved = value in _C_RESERVED or "__" in value or re.match(r"_[A-Z]", value) is not None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) or reserved:
        why = "a C/C++ keyword or reserved name" if reserved else "not a C identifier"
        raise ValueError(
            f"Expected `{name}` to be a C identifier that is not a keyword (letters, digits, "
            f"underscores, not starting with a digit), e.g. 'model' or 'digits_int8'; "
            f"{value!r} is {why}. Received: {name}={value!r}"
        )
    return value
