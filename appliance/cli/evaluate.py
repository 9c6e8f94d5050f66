"""``appliance eval faces | voice | video | sessions``: the models measured on labelled data."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from appliance.cli.app import eval_app
from appliance.cli.common import ConfigOpt, UserError, filters, load, model_manifest, setup_logging, write_outputs


ROOM_HELP = ("play every {} in a simulated room first: rt60=S,drr=DB,snr=DB,noise=FILE,seed=N (any subset; noise "
             "defaults to pink), e.g. rt60=0.8,drr=0,snr=10,noise=shop.wav")


def parse_room(spec: str | None):
    """--room SPEC -> Room (None without one); a spec that cannot be used is the user's error, in words."""
    if spec is None:
        return None
    from appliance.tools.room import Room, RoomError

    try:
        return Room.parse(spec)
    except RoomError as e:
        raise UserError(str(e)) from None


@eval_app.command("faces")
def eval_faces(
    directory: Path = typer.Argument(..., help="DIR/<label>/*.png|jpg (labels as in the model manifest), or with "
                                     "--labels ferplus the FER+ index (ferplus_index.csv or the folder holding it)"),
    labels: str = typer.Option("folder", "--labels", help="folder: the folder names; ferplus: the FER+ crowd "
                               "majority (and FER2013's label beside it)"),
    split: str = typer.Option("public_test", "--split", help="with --labels ferplus: the split to read"),
    model: Optional[str] = typer.Option(None, "--model", help="model folder name under models/onnx, or a path "
                                        "to a model folder or .onnx file with its manifest.json beside it"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | int8 (default: runtime's choice)"),
    crop_scale: float = typer.Option(1.0, "--crop-scale", help="re-frame each face S times as wide about its "
                                     "centre (S < 1 tighter, S > 1 looser, border pixels repeated), 0.5-2"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON"),
    png: Optional[Path] = typer.Option(None, "--png", help="write the confusion matrix as PNG"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Accuracy, macro-F1, per-class recall/precision and calibration error (ECE) of the expression model."""
    from appliance.tools.evaluation import evaluate_faces, evaluate_ferplus, stderr_progress
    from appliance.perception.expression import ExpressionModel

    if labels not in ("folder", "ferplus"):
        raise UserError(f"--labels {labels!r}: use 'folder' or 'ferplus'")
    if not 0.5 <= crop_scale <= 2.0:
        raise UserError(f"--crop-scale {crop_scale:g}: use a scale from 0.5 (half the face) to 2 (twice as wide)")
    cfg = load(config, **{"runtime.precision": precision})
    setup_logging("WARNING")
    manifest = model_manifest(model or cfg.expression.model, cfg)
    expression = ExpressionModel(manifest, cfg.runtime)
    progress = stderr_progress("evaluating")
    report = (evaluate_ferplus(directory, expression, split, progress=progress, crop_scale=crop_scale)
              if labels == "ferplus" else evaluate_faces(directory, expression, progress=progress,
                                                          crop_scale=crop_scale))
    print(report.table())
    write_outputs(report.as_dict(), json_out, report, png)


@eval_app.command("voice")
def eval_voice(
    directory: Path = typer.Argument(..., help="folder with index.csv (path,label columns; paths relative to it)"),
    model: Optional[str] = typer.Option(None, "--model", help="model folder name under models/onnx, or a path"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | int8 (default: runtime's choice)"),
    where: Optional[list[str]] = typer.Option(None, "--where", help="keep rows whose COLUMN is one of the values: "
                                              "COLUMN=V1,V2 (repeatable), e.g. speaker=ravdess-17,ravdess-18"),
    index: Optional[Path] = typer.Option(None, "--index", help="another CSV instead of DIR/index.csv"),
    anger_model: Optional[str] = typer.Option(None, "--anger-model", help="the voice's anger from this speech-"
                                              "encoder model (voice.anger_model, e.g. voice_anger_encoder); "
                                              "'' for the tone model's anger head"),
    room: Optional[str] = typer.Option(None, "--room", metavar="SPEC", help=ROOM_HELP.format("clip")),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON"),
    png: Optional[Path] = typer.Option(None, "--png", help="write the confusion matrix as PNG (default: next "
                                       "to --json)"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Accuracy, macro-F1, per-class recall and anger recall/precision of the vocal-tone model on clips."""
    from appliance.tools.evaluation import evaluate_voice, stderr_progress
    from appliance.perception.voice import VoiceToneModel
    from appliance.perception.voice_encoder import configured

    cfg = load(config, **{"runtime.precision": precision, "voice.anger_model": anger_model})
    setup_logging("WARNING")
    kept = filters(where)
    played_in = parse_room(room)
    manifest = model_manifest(model or cfg.voice.model, cfg)
    tone = VoiceToneModel(manifest, cfg.runtime, anger=configured(cfg.models.dir / "onnx", cfg.voice.anger_model,
                                                                   cfg.runtime))
    report = evaluate_voice(directory, tone, index=index, where=kept, progress=stderr_progress("evaluating"),
                            room=played_in)
    angry = report.per_class.get("angry")
    print(report.table())
    if angry:
        auc = f", ROC AUC angry vs rest {report.angry_auc:.3f}" if report.angry_auc is not None else ""
        if report.classifier_angry_auc is not None:
            which = f"{tone.anger_model.manifest.name}'s P(angry)" if tone.anger_model else "anger head"
            auc += f" ({which}; the classifier's angry output alone {report.classifier_angry_auc:.3f})"
        print(f"\nanger: recall {angry['recall']:.3f}, precision {angry['precision']:.3f} (n={angry['n']}){auc}")
    write_outputs(report.as_dict() | ({"anger": angry} if angry else {}), json_out, report,
                   png or (json_out.with_suffix(".png") if json_out else None))


@eval_app.command("video")
def eval_video(
    directory: Path = typer.Argument(..., help="folder with index.csv (path,label[,audio] columns; paths relative "
                                     "to it)"),
    index: Optional[Path] = typer.Option(None, "--index", help="another CSV instead of DIR/index.csv"),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="simulated seconds per clip, looped (default: "
                                            "one summary window, aggregate.window_s)"),
    model: Optional[str] = typer.Option(None, "--model", help="expression model folder under models/onnx"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | int8 (default: runtime's choice)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON"),
    png: Optional[Path] = typer.Option(None, "--png", help="write the face confusion matrix as PNG (default: next "
                                       "to --json)"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Labelled clips through the real daemon pipeline: per clip faces seen, face and voice distributions, anger
    index and alerts."""
    from appliance.tools.evaluation import stderr_progress
    from appliance.manifest import load_manifest
    from appliance.perception.expression import ExpressionModel
    from appliance.tools.video_eval import as_json, confusion_report, evaluate_clips, quiet_pipeline_logs, table

    cfg = load(config, **{"runtime.precision": precision, "expression.model": model})
    setup_logging("WARNING")
    quiet_pipeline_logs()
    # What the daemon will pick for the face model (same config, same runtime planning).
    picked = ExpressionModel(load_manifest(cfg.models.dir / "onnx" / cfg.expression.model), cfg.runtime)
    results = evaluate_clips(directory, cfg, picked.labels, index=index, seconds=seconds,
                             progress=stderr_progress("playing clips"))
    print(table(results))
    report = confusion_report(results, picked.labels, cfg.expression.model, picked.report.precision,
                              picked.report.provider, str(directory))
    meta = {"model": cfg.expression.model, "voice_model": cfg.voice.model, "precision": picked.report.precision,
            "provider": picked.report.provider, "dataset": str(directory),
            "seconds_per_clip": seconds or cfg.aggregate.window_s, "rate_hz": cfg.loop.rate_hz}
    write_outputs(as_json(results, meta), json_out, report,
                   png or (json_out.with_suffix(".png") if json_out else None))


@eval_app.command("sessions")
def eval_sessions(
    directory: Path = typer.Argument(..., help="speech folder with index.csv / index_more.csv / index_langs.csv "
                                     "(path,corpus,speaker,label columns)"),
    where: Optional[list[str]] = typer.Option(None, "--where", help="keep rows whose COLUMN is one of the values: "
                                              "COLUMN=V1,V2 (repeatable), e.g. the speakers no model trained on"),
    video: Optional[Path] = typer.Option(None, "--video", help="clip folder (index.csv path,label): a face clip of "
                                         "the session's emotion plays beside it; default: a camera that sees no one"),
    seconds: float = typer.Option(60.0, "--seconds", help="each session at least this long (clips reused)"),
    seed: int = typer.Option(20261127, "--seed", help="the order of clips and pauses"),
    room: Optional[str] = typer.Option(None, "--room", metavar="SPEC", help=ROOM_HELP.format("session")),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write sessions and summary as JSON (markdown and "
                                            "a plot beside it)"),
    choose_thresholds: Optional[float] = typer.Option(
        None, "--choose-thresholds", min=0, metavar="FALSE_ALERTS_PER_HOUR",
        help="also choose the alert on/off thresholds that keep false alerts per hour (neutral, calm, happy, sad "
             "sessions) within this, on two folds of speakers (chosen on one, scored on the other) and on all"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Minute-long sessions of one speaker in one emotion through the real daemon: share alerted, time to the first
    alert, window anger index, false alerts per hour; by emotion, speaker sex and corpus."""
    import shlex

    from appliance.tools.evaluation import stderr_progress
    from appliance.tools.session_eval import as_json, evaluate_sessions, markdown, plot, summarise
    from appliance.tools.video_eval import quiet_pipeline_logs

    cfg = load(config)
    if not cfg.alerts_enabled:
        raise UserError("alerts are off in this config (kiosk profile, customer-experience purpose): nothing to "
                        "measure")
    setup_logging("WARNING")
    quiet_pipeline_logs()
    played_in = parse_room(room)
    results = evaluate_sessions(directory, cfg, filters(where), video, seconds, seed,
                                progress=stderr_progress("playing sessions"), trace=choose_thresholds is not None,
                                room=played_in)
    summary = summarise(results)
    if choose_thresholds is not None:
        from appliance.tools.thresholds import cross_fit

        summary["thresholds"] = cross_fit(results, cfg.alerts, choose_thresholds)
    meta = {"command": "appliance eval sessions " + shlex.join(sys.argv[3:]), "sessions": len(results),
            "hours": sum(r.seconds for r in results) / 3600, "on_threshold": cfg.alerts.on_threshold,
            "off_threshold": cfg.alerts.off_threshold, "alert_window_s": cfg.alerts.window_s,
            "cooldown_s": cfg.alerts.cooldown_s,
            "models": (f"{cfg.expression.model} + " if video else "") + cfg.voice.model
            + (f" (anger: {cfg.voice.anger_model})" if cfg.voice.anger_model else ""),
            "room": played_in.label if played_in else None}
    text = markdown(summary, meta)
    print(text)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(as_json(results, summary, meta), indent=2) + "\n")
        json_out.with_suffix(".md").write_text(text)
        print(f"wrote {json_out}, {json_out.with_suffix('.md')}, {plot(results, json_out.with_suffix('.png'))}")
