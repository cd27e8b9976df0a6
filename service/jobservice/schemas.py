"""JSON Schema of every wire message, generated from the pydantic models in `model`."""

from __future__ import annotations

import json
from pathlib import Path

from jobservice.model import WIRE_MODELS


def render_schemas() -> dict[str, str]:
    """{file name: JSON text} for schemas/."""
    out: dict[str, str] = {}
    for name, model in WIRE_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://jobservice.dev/schemas/{name}.schema.json"
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in render_schemas().items():
        path = folder / file_name
        path.write_text(text)
        written.append(path)
    return written


def drifted_schemas(folder: Path) -> list[str]:
    """Files in `folder` that differ from what the models generate (or are missing)."""
    return [name for name, text in render_schemas().items()
            if not (folder / name).is_file() or (folder / name).read_text() != text]
