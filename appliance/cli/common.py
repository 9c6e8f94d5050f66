"""What every command shares: the config option and loading, logging, user errors, filters and report files."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from appliance.config import AppConfig, load_config

SYSTEM_CONFIG = Path("/etc/appliance/config.toml")
ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config file (default: $APPLIANCE_CONFIG, then "
                         "/etc/appliance/config.toml if it exists, else built-in defaults)")


class UserError(Exception):
    """Something the user can fix; printed as one clear message, exit code 2, no traceback."""


def config_path(path: Optional[Path]) -> Optional[Path]:
    if path is not None:
        return path
    if os.environ.get("APPLIANCE_CONFIG"):
        return Path(os.environ["APPLIANCE_CONFIG"])
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def load(path: Optional[Path], **overrides) -> AppConfig:
    return load_config(config_path(path), overrides=overrides)


def setup_logging(level: str) -> None:
    from appliance.host.logs import OneLineFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler])


def filters(items: Optional[list[str]]) -> dict[str, set[str]]:
    filters = {}
    for item in items or []:
        column, sep, values = item.partition("=")
        if not sep or not values:
            raise UserError(f"{item!r}: expected COLUMN=V1,V2")
        filters[column] = set(values.split(","))
    return filters



def write_outputs(data: dict, json_out: Optional[Path], report, png: Optional[Path]) -> None:
    """An eval command's JSON (where asked) and confusion matrix PNG (where asked)."""
    from appliance.tools.metrics import confusion_png

    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {json_out}")
    if png:
        print(f"wrote {confusion_png(report, png)}")


def model_manifest(name: str, cfg: AppConfig):
    from appliance.manifest import load_manifest

    path = Path(name)
    folder = path.parent if path.suffix == ".onnx" else (path if path.is_dir() else cfg.models.dir / "onnx" / name)
    manifest = load_manifest(folder)
    if path.suffix == ".onnx":
        # A specific file: evaluate exactly that variant.
        chosen = next((v for v in manifest.variants if v.file == path.name), None)
        if chosen is None:
            raise UserError(f"{name} is not listed in {folder}/manifest.json")
        cfg.runtime.precision = chosen.precision
    return manifest

