"""``appliance doctor``, ``watch``, ``notice`` and ``audit``: the unit checked, the fleet watched, the shop told."""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from appliance import __version__
from appliance.cli.app import app
from appliance.cli.common import ConfigOpt, UserError, load, setup_logging


@app.command()
def doctor(config: Optional[Path] = ConfigOpt) -> None:
    """Check camera, microphone, models, providers, engine cache, broker, disk and clock; exit 1 on any failure."""
    from appliance.tools.doctor import run_checks

    cfg = load(config)
    setup_logging("ERROR")
    checks = run_checks(cfg)
    for check in checks:
        print(check.line(), flush=True)
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} checks passed" + (f"; {len(failed)} failed" if failed
                                                                             else ""))
    if failed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ watch
@app.command()
def watch(
    config: Optional[Path] = ConfigOpt,
    broker: Optional[str] = typer.Option(None, "--broker", help="mqtt(s)://HOST:PORT (default: mqtt.broker of "
                                         "the config, else mqtt://127.0.0.1:1883)"),
    username: Optional[str] = typer.Option(None, "--username", help="dashboard user (password: "
                                           "APPLIANCE_MQTT_PASSWORD or --password-file)"),
    password_file: Optional[Path] = typer.Option(None, "--password-file", help="file holding the password"),
    seconds: Optional[float] = typer.Option(None, "--seconds", min=0.5, help="collect this long, print the "
                                            "table once and exit (default: live until Ctrl-C)"),
    json_out: bool = typer.Option(False, "--json", help="with --seconds: one JSON object per unit instead"),
) -> None:
    """Live table of every unit on the broker: status, last summary, anger index, alerts, stats, outbox depth."""
    from appliance.tools.watch import FleetWatcher, WatchError

    overrides = {"mqtt.broker": broker, "mqtt.username": username, "mqtt.password_file": password_file}
    cfg = load(config, **overrides)
    setup_logging("WARNING")
    url = cfg.mqtt.broker or "mqtt://127.0.0.1:1883"
    watcher = FleetWatcher(cfg.mqtt, url, f"appliance-watch-{os.getpid()}")
    try:
        watcher.start()
    except WatchError as e:
        raise UserError(str(e)) from None
    print(f"watching {url} ({', '.join(watcher.view.subscriptions())})", file=sys.stderr, flush=True)
    live = seconds is None and sys.stdout.isatty()
    refusal_shown = False
    try:
        if seconds is not None:
            time.sleep(seconds)
            if not watcher.connected.is_set():
                raise UserError(f"no MQTT connection to {url} within {seconds:g} s"
                                + (f": the broker refused it ({watcher.refused})" if watcher.refused else ""))
            print(watcher.as_json() if json_out else watcher.render(), flush=True)
            return
        while True:
            if watcher.refused and not refusal_shown:
                print(f"broker refused the connection: {watcher.refused}", file=sys.stderr, flush=True)
                refusal_shown = True
            stamp = datetime.now().strftime("%H:%M:%S")
            # A terminal gets a table redrawn in place every second; a log or pipe one every 10 s.
            print(("\x1b[H\x1b[J" if live else "") + f"{stamp}  {url}\n{watcher.render()}\n", flush=True)
            time.sleep(1 if live else 10)
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()


# ------------------------------------------------------------------------------------------------ privacy
@app.command()
def notice(config: Optional[Path] = ConfigOpt) -> None:
    """Print the signage text for this unit: what is measured, what is sent, retention, purpose, contact."""
    from appliance.tools.notice import notice_text

    print(notice_text(load(config)))


@app.command()
def audit(config: Optional[Path] = ConfigOpt, tail: int = typer.Option(20, "--tail", help="lines to show")) -> None:
    """Show the local audit log and check that its hash chain is intact (exit 1 if not)."""
    from appliance.host.audit import verify

    cfg = load(config)
    path = cfg.state.audit
    if not path.exists():
        raise UserError(f"no audit log at {path} yet (written from the first `appliance run`)")
    for line in path.read_text().splitlines()[-tail:]:
        print(line)
    intact, n, what = verify(path)
    print(f"\n{path}: {n} entries, {what}")
    if not intact:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ entry
@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)
