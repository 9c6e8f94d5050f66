"""The ``appliance`` command's Typer apps; each command group's module adds its commands to them."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Edge emotion appliance: camera -> faces -> expression model -> anonymised MQTT summaries.")
config_app = typer.Typer(no_args_is_help=True, help="Create, check and show the configuration.")
eval_app = typer.Typer(no_args_is_help=True, help="Measure a model's accuracy on a labelled dataset folder.")
models_app = typer.Typer(no_args_is_help=True, help="The shipped models: list them, build TensorRT engines.")
zones_app = typer.Typer(no_args_is_help=True, help="Staff exclusion zones (never analysed).")
