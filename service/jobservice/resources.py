"""Files shipped inside the package (migrations, queries, JSON schemas).

In a wheel they live in `jobservice/sql` and `jobservice/schemas`; in a source checkout
they are the top-level `sql/` and `schemas/` folders.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT_DIR = _PACKAGE_DIR.parent.parent


def resource_dir(name: str) -> Path:
    """The folder `name` (`sql` or `schemas`), packaged or from the checkout."""
    for candidate in (_PACKAGE_DIR / name, _CHECKOUT_DIR / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"jobservice resource folder {name!r} is missing from the install")
