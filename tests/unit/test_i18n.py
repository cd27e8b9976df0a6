"""Message catalogs: lookup order, fallbacks, formatting, extra folders."""

from __future__ import annotations

from pathlib import Path

from jobservice.i18n import MessageCatalogs, format_template, locale_chain


def test_locale_chain_falls_back_to_the_language_then_english() -> None:
    assert locale_chain("de_CH") == ["de_CH", "de", "en"]
    assert locale_chain("de-AT") == ["de_AT", "de", "en"]
    assert locale_chain("en") == ["en"]
    assert locale_chain(None) == ["en"]


def test_packaged_catalogs_render_with_fallback_to_english_then_the_key() -> None:
    catalogs = MessageCatalogs()
    assert catalogs.render("admin", "import.done", {"count": 4}, "de") == \
        "Import abgeschlossen: 4 Elemente"
    assert catalogs.render("admin", "import.done", {"count": 4}, "fr") == \
        "Import finished: 4 elements"
    assert catalogs.render("admin", "import.rejected", {"element": 1, "reason": "x"}, "de") == \
        "Element 1 was rejected: x"
    assert catalogs.render("admin", "nothing.here", {}, "de") == "nothing.here"
    # keys shared by every domain (common.*.yaml), also in a domain without its own catalog
    assert catalogs.render("portal", "jobservice.step.started",
                           {"step": 1, "steps": 2, "name": "a"}, "fr") == "Étape 1 sur 2 : a"
    assert "admin" not in catalogs.locales("portal") and "de" in catalogs.locales("admin")


def test_a_missing_parameter_stays_visible_and_a_broken_template_does_not_raise() -> None:
    assert format_template("{done} of {count}", {"done": 1}) == "1 of {count}"
    assert format_template("broken {", {}) == "broken {"


def test_extra_folders_add_domains_and_override_the_package(tmp_path: Path) -> None:
    (tmp_path / "portal.de.yaml").write_text("greeting:\n  hello: 'Hallo {name}'\n")
    (tmp_path / "admin.de.yaml").write_text("import:\n  done: 'Fertig ({count})'\n")
    (tmp_path / "broken.en.yaml").write_text("- not a mapping\n")
    catalogs = MessageCatalogs([tmp_path])
    assert catalogs.render("portal", "greeting.hello", {"name": "Ada"}, "de") == "Hallo Ada"
    assert catalogs.render("admin", "import.done", {"count": 2}, "de") == "Fertig (2)"
    assert catalogs.render("admin", "import.started", {"count": 2}, "de") == \
        "Import von 2 Elementen gestartet"
    assert catalogs.render("broken", "any", {}, "en") == "any"
