"""``appliance config init | validate | show``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from appliance.cli.app import config_app
from appliance.cli.common import ConfigOpt, UserError, config_path, load
from appliance.config import EXAMPLE_CONFIG, to_toml


@config_app.command("init")
def config_init(out: Path = typer.Argument(Path("config.toml"), help="where to write"),
                force: bool = typer.Option(False, "--force", help="overwrite an existing file")) -> None:
    """Write an annotated config file with the defaults."""
    if out.exists() and not force:
        raise UserError(f"{out} exists; use --force to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(EXAMPLE_CONFIG.read_text())
    print(f"wrote {out}; check it with: appliance config validate --config {out}")


@config_app.command("validate")
def config_validate(config: Optional[Path] = ConfigOpt) -> None:
    """Check a config (file + APPLIANCE_* environment); exit 2 naming every bad key."""
    path = config_path(config)
    cfg = load(config)
    print(f"config OK ({path or 'built-in defaults'}): device {cfg.device.id}, profile {cfg.device.profile}, "
          f"k={cfg.k_min}, camera {cfg.camera.source}, broker {cfg.mqtt.broker or 'embedded'}")


@config_app.command("show")
def config_show(config: Optional[Path] = ConfigOpt) -> None:
    """Print the effective config (defaults < file < environment) as TOML."""
    print(to_toml(load(config)), end="")

