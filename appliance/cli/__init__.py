"""The ``appliance`` command (contract: DESIGN.md "CLI"). Every command works on a CPU-only machine.

One module per command group; they only parse options, call the package and print.
"""

from __future__ import annotations

import os
import sys

# MediaPipe (glog/absl) and LiteRT read these when they load; the daemon's own log says what matters.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import typer  # noqa: E402

# Imported in the order `appliance --help` lists the commands; each module adds its own.
from appliance.cli import run, bench, fleet, configure, evaluate, models, zones  # noqa: E402,F401,I001
from appliance.cli.app import app, config_app, eval_app, models_app, zones_app  # noqa: E402
from appliance.cli.common import UserError  # noqa: E402
from appliance.config import ConfigError  # noqa: E402

app.add_typer(config_app, name="config")
app.add_typer(eval_app, name="eval")
app.add_typer(models_app, name="models")
app.add_typer(zones_app, name="zones")


def main() -> None:
    from appliance.tools.evaluation import DatasetError
    from appliance.manifest import ModelFileError
    from appliance.runtime import NoUsableProvider
    from appliance.publish.client import MqttSetupError
    from appliance.publish.outbox_db import OutboxError
    from appliance.sources.camera import SourceError
    from appliance.host.statedir import StateDirError

    try:
        # Without standalone mode click returns (not raises) the code of typer.Exit; pass it on.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except ConfigError as e:
        print("config error:", file=sys.stderr)
        for issue in e.issues:
            print(f"  {issue}", file=sys.stderr)
        sys.exit(2)
    except (UserError, SourceError, ModelFileError, NoUsableProvider, DatasetError, FileNotFoundError, MqttSetupError,
            OutboxError, StateDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:
        # Usage errors (unknown command or option) carry their own message and exit code. typer vendors click,
        # so the class is matched by what it offers rather than by import.
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
