"""Printing and writing tables (pandas DataFrames) as aligned text, CSV or JSON records."""

from __future__ import annotations

import sys
from pathlib import Path

FORMATS = ("table", "csv", "json")


def format_table(df, fmt: str, floatfmt: str = "%.4f") -> str:
    """A DataFrame as text: ``table`` (aligned), ``csv`` or ``json`` (records).

    Raises:
        ValueError: unknown format.
    """
    if fmt == "csv":
        return df.to_csv(index=False, float_format=floatfmt)
    if fmt == "json":
        return df.to_json(orient="records", indent=2, double_precision=6) + "\n"
    if fmt == "table":
        return df.to_string(index=False, float_format=lambda v: floatfmt % v) + "\n"
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def emit_table(df, fmt: str, out: Path | None = None, floatfmt: str = "%.4f") -> None:
    """Print a DataFrame (``out`` None) or write it atomically to ``out``."""
    text = format_table(df, fmt, floatfmt)
    if out is None:
        sys.stdout.write(text)
    else:
        from nas.io import atomic_write_text

        atomic_write_text(out, text)
