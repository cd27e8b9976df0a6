"""Localized job messages: catalogs of `key: template` per domain and locale.

A catalog is a YAML file `<domain>.<locale>.yaml` (nested mappings are flattened with dots:
`step: {started: ...}` is the key `step.started`). The domain is the job's context (`admin`
by default). `common.<locale>.yaml` holds keys every domain shares (the built-in ones); a
domain's own file overrides them. Catalogs ship inside the package (`jobservice/messages`);
folders listed in JOBSERVICE_MESSAGE_DIRS are read after it and override it.

Lookup: the locale (`de_CH`, then `de`), then English, then the key itself. Templates use
`str.format` fields: `"{count} files imported"`; a missing parameter stays as `{name}`.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

FALLBACK_LOCALE = "en"
COMMON_DOMAIN = "common"
PACKAGE_CATALOGS = Path(__file__).resolve().parent / "messages"


class _KeepMissing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def format_template(template: str, params: Mapping[str, Any]) -> str:
    """`template` with `params` filled in; never raises (a broken template is shown as is)."""
    try:
        return string.Formatter().vformat(template, (), _KeepMissing(params))
    except (ValueError, IndexError, AttributeError, KeyError, TypeError):
        return template


def locale_chain(locale: str | None) -> list[str]:
    """`de_CH` -> [de_CH, de, en]; `en` -> [en]."""
    chain: list[str] = []
    if locale:
        normalized = locale.replace("-", "_")
        chain.append(normalized)
        language = normalized.split("_", 1)[0]
        if language != normalized:
            chain.append(language)
    if FALLBACK_LOCALE not in chain:
        chain.append(FALLBACK_LOCALE)
    return chain


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        elif value is not None:
            out[name] = str(value)
    return out


def _read_catalog(path: Path) -> dict[str, str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        log.warning("message catalog %s cannot be read: %s", path, exc)
        return {}
    if not isinstance(data, Mapping):
        log.warning("message catalog %s is not a mapping of keys to texts", path)
        return {}
    return _flatten(data)


class MessageCatalogs:
    """Every catalog found in the package and in `extra_dirs` (read lazily, cached)."""

    def __init__(self, extra_dirs: Iterable[Path | str] = ()) -> None:
        self._dirs: tuple[Path, ...] = (PACKAGE_CATALOGS, *(Path(d) for d in extra_dirs))
        self._catalog = lru_cache(maxsize=256)(self._load)

    def _load(self, domain: str, locale: str) -> dict[str, str]:
        merged: dict[str, str] = {}
        for name in (COMMON_DOMAIN, domain):
            for folder in self._dirs:
                path = folder / f"{name}.{locale}.yaml"
                if path.is_file():
                    merged.update(_read_catalog(path))
        return merged

    def template(self, domain: str, key: str, locale: str | None) -> str | None:
        for candidate in locale_chain(locale):
            found = self._catalog(domain, candidate).get(key)
            if found is not None:
                return found
        return None

    def render(self, domain: str, key: str, params: Mapping[str, Any] | None = None,
               locale: str | None = FALLBACK_LOCALE) -> str:
        """The message in `locale`, else in English, else the key itself."""
        found = self.template(domain, key, locale)
        return key if found is None else format_template(found, params or {})

    def locales(self, domain: str) -> Sequence[str]:
        """The locales with a catalog for `domain` (for documentation and tests)."""
        found = {p.name.split(".")[1] for folder in self._dirs if folder.is_dir()
                 for p in folder.glob(f"{domain}.*.yaml")}
        return sorted(found)


DEFAULT_CATALOGS = MessageCatalogs()
