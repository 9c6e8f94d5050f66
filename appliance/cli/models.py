"""``appliance models list | build-engines``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from appliance.cli.app import models_app
from appliance.cli.common import ConfigOpt, UserError, load, setup_logging


@models_app.command("list")
def models_list(config: Optional[Path] = ConfigOpt) -> None:
    """Every shipped model: files, sha256 check, measured accuracy, and what this unit's runtime picks."""
    from appliance.manifest import load_manifest
    from appliance.perception import vad
    from appliance.runtime import open_session
    from appliance.tools.doctor import check_models
    from appliance.tools.engines import engine_manifests

    cfg = load(config)
    setup_logging("WARNING")
    for check in check_models(cfg):
        print(check.line())
    for manifest, runtime in [(m, cfg.runtime) for m in engine_manifests(cfg)] + [
            (load_manifest(cfg.models.dir / "onnx" / cfg.voice.vad_model), vad.RUNTIME)]:
        _, report = open_session(manifest, runtime)
        print(f"       {manifest.name}: runtime picks {report.provider} {report.precision} ({report.file})")


@models_app.command("build-engines")
def models_build_engines(config: Optional[Path] = ConfigOpt) -> None:
    """Build (warm) the TensorRT engine cache for every model at the configured precision, before first start."""
    from appliance.tools.engines import EngineError, build_engines

    cfg = load(config)
    setup_logging("WARNING")
    try:
        build_engines(cfg, lambda line: print(line, flush=True))
    except EngineError as e:
        raise UserError(str(e)) from None
