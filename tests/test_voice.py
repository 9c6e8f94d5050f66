"""The voice path on real audio: features, files, VAD, the tone model, the speech buffer and anger alerts."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from appliance.windows.alerts import Anger
from appliance.config import default_models_dir
from appliance.runtime import RuntimeConfig
from appliance.windows.config import AlertsConfig
from appliance.manifest import load_manifest
from appliance.perception.features import DEFAULT, clip_segments, log_mel
from appliance.perception.vad import VoiceActivity
from appliance.perception.voice import SpeechBuffer, VoiceToneModel
from appliance.sources.audio import AudioRing, FileAudioSource, load_audio_file, resample
from appliance.sources.camera import SourceError
from conftest import DEMO

DEMO_AUDIO = DEMO.with_suffix(".flac")
MODELS = default_models_dir() / "onnx"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio_file(DEMO_AUDIO)


@pytest.fixture(scope="module")
def vad_manifest():
    return load_manifest(MODELS / "silero_vad")


# --------------------------------------------------------------------------------------------- features
def test_log_mel_shape_and_level_independence(speech):
    seg = speech[:32000]
    f = log_mel(seg)
    assert f.shape == (64, DEFAULT.frames(32000)) and f.dtype == np.float32
    # 20 dB louder or quieter: the same features (the model must not learn loudness).
    assert np.abs(log_mel(seg * 10) - f).max() < 0.05 and np.abs(log_mel(seg * 0.1) - f).max() < 0.05


def test_log_mel_of_silence_and_short_input_is_finite():
    assert np.isfinite(log_mel(np.zeros(32000, np.float32))).all()
    assert log_mel(np.zeros(10, np.float32)).shape == (64, 1)
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((2, 100), np.float32))


def test_mel_filterbank_puts_a_tone_in_the_right_band():
    from appliance.perception.features import hz_to_mel, mel_filterbank

    t = np.arange(32000) / 16000
    f = log_mel(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    centres = np.linspace(hz_to_mel(50.0), hz_to_mel(8000.0), 66)[1:-1]
    assert abs(int(f.mean(axis=1).argmax()) - int(np.abs(centres - hz_to_mel(1000.0)).argmin())) <= 1
    assert mel_filterbank().shape == (64, 257)


def test_clip_segments_cover_the_clip():
    segs = clip_segments(np.arange(40000, dtype=np.float32), 32000, 8000)
    assert [s[0] for s in segs] == [0, 8000] and all(len(s) == 32000 for s in segs)
    assert len(clip_segments(np.ones(100, np.float32), 32000, 8000)[0]) == 32000


# ------------------------------------------------------------------------------------------------ files
def test_resample_keeps_the_pitch():
    t = np.arange(44100) / 44100
    x = resample(np.sin(2 * np.pi * 440 * t), 44100, 16000)
    assert len(x) == 16000
    assert abs(np.fft.rfft(x).__abs__().argmax() - 440) <= 1


def test_bad_audio_files_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        load_audio_file(tmp_path / "none.wav")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(SourceError, match="has no samples"):
        load_audio_file(empty)
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + np.random.default_rng(0).bytes(5000))
    with pytest.raises(SourceError, match="cannot be decoded"):
        load_audio_file(corrupt)


def test_other_sample_rates_and_stereo_are_converted(tmp_path, speech):
    path = tmp_path / "cd.wav"
    stereo = np.stack([resample(speech, 16000, 44100)] * 2, axis=1)
    sf.write(path, stereo, 44100)
    back = load_audio_file(path)
    assert abs(len(back) - len(speech)) <= 1
    assert np.corrcoef(back[:16000], speech[:16000])[0, 1] > 0.99


def test_ring_wraps_and_counts_what_the_reader_lost():
    ring = AudioRing(seconds=1.0)
    ring.write(np.arange(10000, dtype=np.float32))
    assert np.array_equal(ring.read_new(), np.arange(10000))
    ring.write(np.arange(10000, 30000, dtype=np.float32))   # 20,000 new > 16,000 capacity
    out = ring.read_new()
    assert len(out) == 16000 and out[0] == 14000 and out[-1] == 29999 and ring.lost == 4000
    assert len(ring.read_new()) == 0


def test_file_source_plays_paced_and_ends():
    src = FileAudioSource(DEMO_AUDIO, realtime=False, loop=False).start()
    src._thread.join(10)
    assert src.ended and src.ring.written == len(src.audio)


# -------------------------------------------------------------------------------------------------- VAD
def test_vad_finds_the_speech_in_the_demo(vad_manifest, speech):
    vad = VoiceActivity(vad_manifest)
    out = vad.feed(speech)
    assert out.seconds_speech / out.seconds_in > 0.5


@pytest.mark.parametrize("kind", ["silence", "noise", "hum"])
def test_vad_ignores_silence_and_noise(vad_manifest, kind):
    rng = np.random.default_rng(0)
    t = np.arange(5 * 16000) / 16000
    audio = {"silence": np.zeros(len(t)), "noise": 0.1 * rng.standard_normal(len(t)),
             "hum": 0.3 * np.sin(2 * np.pi * 50 * t)}[kind].astype(np.float32)
    out = VoiceActivity(vad_manifest).feed(audio)
    assert out.seconds_speech / out.seconds_in < 0.1


def test_vad_streams_in_any_block_size(vad_manifest, speech):
    whole = VoiceActivity(vad_manifest).feed(speech).seconds_speech
    vad = VoiceActivity(vad_manifest)
    parts = sum(vad.feed(speech[i:i + 1600]).seconds_speech for i in range(0, len(speech), 1600))
    assert parts == pytest.approx(whole, abs=0.05)


def test_vad_bound_buffers_give_what_plain_runs_give(vad_manifest, speech):
    # The wrapper runs the model through IO binding on buffers it reuses, with the state ping-ponging between two
    # of them; a plain session.run that hands the state back each time is the reference, chunk for chunk.
    import onnxruntime as ort

    session = ort.InferenceSession(str(vad_manifest.path_of(vad_manifest.variant("fp32"))),
                                   providers=["CPUExecutionProvider"])
    state, context, expected = np.zeros((2, 1, 128), np.float32), np.zeros(64, np.float32), []
    chunks = [speech[i:i + 512] for i in range(0, 512 * 120, 512)]
    for chunk in chunks:
        p, state = session.run(None, {"input": np.concatenate([context, chunk])[None], "state": state,
                                      "sr": np.array(16000, np.int64)})
        expected.append(float(p[0, 0]))
        context = chunk[-64:]
    vad = VoiceActivity(vad_manifest)
    for _ in range(2):    # the second pass checks that reset() forgets the state and the context
        got = [vad.probability(chunk) for chunk in chunks]
        assert got == pytest.approx(expected, abs=1e-6)
        assert max(expected) > 0.9 and min(expected) < 0.1    # real speech and pauses, not a constant
        vad.reset()


def test_clipping_is_measured(vad_manifest, speech):
    clipped = np.clip(speech * 30, -1, 1)
    out = VoiceActivity(vad_manifest).feed(clipped)
    assert out.clipped > 0.01 and out.peak == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- tone model
def test_tone_model_on_real_speech(speech):
    tone = VoiceToneModel(load_manifest(MODELS / "voice_tone_cnn"), RuntimeConfig(providers=["cpu"]))
    clip = tone.classify_clip(speech)
    assert clip.probabilities.shape == (1, 8) and clip.probabilities.sum() == pytest.approx(1, abs=1e-4)
    assert clip.anger.shape == (1,) and 0 < clip.anger[0] < 1
    batch = tone.classify(tone.features(np.stack([speech[:32000], speech[16000:48000]])))
    assert batch.probabilities.shape == (2, 8) and batch.anger.shape == (2,)


def test_speech_buffer_steps():
    buf = SpeechBuffer(step_s=1.0, min_speech_s=1.0)
    outs = [buf.push(np.full(8000, i, np.float32)) for i in range(6)]   # 0.5 s each
    ready = [i for i, o in enumerate(outs) if o is not None]
    assert ready == [1, 3, 5]
    assert len(outs[5]) == 32000 and outs[5][-1] == 5 and outs[5][0] == 2
    assert buf.push(np.zeros(0, np.float32)) is None


# ------------------------------------------------------------------------------------------- the voice worker
class Held:
    """The tone model behind a gate: the worker classifies only when the test lets it."""

    def __init__(self, tone, gate):
        import threading

        self.tone, self.gate, self.features = tone, gate, tone.features
        self.entered = threading.Event()

    @property
    def times(self):
        return self.tone.times

    def __call__(self, features):
        self.entered.set()
        self.gate.wait(10)
        return self.tone(features)


def test_the_voice_worker_classifies_beside_the_caller_and_drops_the_oldest_when_behind(speech):
    import threading

    from appliance.daemon.voice_worker import VoiceWorker

    tone = VoiceToneModel(load_manifest(MODELS / "voice_tone_cnn"), RuntimeConfig(providers=["cpu"]))
    segments = [speech[i * 16000:i * 16000 + 32000] for i in range(5)]
    inline = VoiceWorker(tone, threaded=False)
    for s in segments:
        inline.submit(s)
    expected = inline.take()
    assert [r.probabilities.shape for r in expected] == [(1, 8)] * 5 and inline.take() == []

    gate = threading.Event()
    held = Held(tone, gate)
    worker = VoiceWorker(held, depth=2).start()
    try:
        worker.submit(segments[0])   # taken at once and held; of the four behind it two fit
        assert held.entered.wait(10)
        for s in segments[1:]:
            worker.submit(s)
        gate.set()
        deadline = threading.Event()
        got = []
        for _ in range(100):
            got += worker.take()
            if len(got) == 3:
                break
            deadline.wait(0.05)
    finally:
        worker.stop()
    assert worker.dropped == 2 and worker.classified == 3 and worker.submitted == 5
    # The first segment and the two newest, with what the same model says inline.
    for result, want in zip(got, [expected[0], expected[3], expected[4]]):
        np.testing.assert_allclose(result.probabilities, want.probabilities, atol=1e-6)
        assert result.anger == pytest.approx(want.anger, abs=1e-6) and result.tone.model > 0


def test_a_reset_throws_away_what_was_heard_before_it(speech):
    import threading

    from appliance.daemon.voice_worker import VoiceWorker

    tone = VoiceToneModel(load_manifest(MODELS / "voice_tone_cnn"), RuntimeConfig(providers=["cpu"]))
    gate = threading.Event()
    held = Held(tone, gate)
    worker = VoiceWorker(held).start()
    try:
        worker.submit(speech[:32000])       # being classified when the pause comes
        assert held.entered.wait(10)
        worker.submit(speech[16000:48000])  # waiting
        worker.reset()
        gate.set()
        worker.submit(speech[32000:64000])
        got = []
        for _ in range(100):
            got += worker.take()
            if got:
                break
            threading.Event().wait(0.05)
        threading.Event().wait(0.2)
        got += worker.take()
    finally:
        worker.stop()
    assert len(got) == 1 and worker.classified == 1


# ------------------------------------------------------------------------------------------------ alerts
class MeanIndex:
    """Stands in for fusion.AngerIndex (same interface): these tests check the window, hysteresis and cool-down,
    not a calibration (tests/test_fusion.py checks the shipped one)."""

    def __call__(self, face, voice, **alone):
        present = [p for p in (face, voice) if p is not None]
        return sum(present) / len(present) if present else None

    def face_value(self, face):
        return face

    def voice_value(self, voice):
        return voice


def run_anger(seq, cfg=None, period=0.1):
    anger = Anger(cfg or AlertsConfig(), tick_period_s=period, voice_step_s=1.0, anger_index=MeanIndex())
    alerts = []
    for i, (face, voice) in enumerate(seq):
        a = anger.update(i * period, face, voice)
        if a:
            alerts.append(a)
    return alerts, anger


def voice_every_second(level, seconds):
    return [(None, level if i % 10 == 0 else None) for i in range(int(seconds * 10))]


def test_one_angry_minute_is_one_alert():
    alerts, anger = run_anger(voice_every_second(0.1, 10) + voice_every_second(0.9, 60))
    assert len(alerts) == 1 and alerts[0].voice_anger >= 0.5 and alerts[0].face_anger is None


def test_calm_gives_no_alert_and_thin_evidence_gives_none():
    assert run_anger(voice_every_second(0.2, 60))[0] == []
    # one angry second among silence: less than min_evidence_s of speech in the short window
    assert run_anger([(None, None)] * 50 + [(None, 0.95)] + [(None, None)] * 50)[0] == []


def test_hysteresis_and_cooldown():
    cfg = AlertsConfig(cooldown_s=30)
    flicker = (voice_every_second(0.9, 8) + voice_every_second(0.1, 8)) * 6   # ~96 s, crosses 6 times
    alerts, anger = run_anger(flicker, cfg)
    assert 2 <= len(alerts) <= 4 and anger.held_back >= 1
    assert all(b.at - a.at >= 30 for a, b in zip(alerts, alerts[1:]))
    # staying between off and on thresholds never re-arms
    cfg = AlertsConfig(cooldown_s=0)
    between = (cfg.on_threshold + cfg.off_threshold) / 2
    alerts, _ = run_anger(voice_every_second(0.9, 8) + voice_every_second(between, 80) + voice_every_second(0.9, 8),
                          cfg)
    assert len(alerts) == 1


def test_the_index_gets_each_modality_window_mean():
    seen = []

    class Recording(MeanIndex):
        def __call__(self, face, voice, **alone):
            seen.append((face, voice))
            return 0.0

    anger = Anger(AlertsConfig(), tick_period_s=0.1, voice_step_s=1.0,
                  anger_index=Recording())
    for i in range(100):     # a face every tick at 0.9; a voice result a second, 0.1 until 7 s, then 0.3
        anger.update(i * 0.1, 0.9, (0.1 if i < 70 else 0.3) if i % 10 == 0 else None)
    face, voice = seen[-1]
    assert face == pytest.approx(0.9) and voice == pytest.approx(0.22)     # the last 5 s: 0.1 0.1 0.3 0.3 0.3


def test_speech_buffer_ring_hands_out_what_a_plain_buffer_would():
    """The ring copies only new samples; what it hands out must equal the last seconds of speech, in order."""
    from appliance.perception.features import fit_length
    from appliance.perception.voice import SpeechBuffer

    rng = np.random.default_rng(0)
    buffer, plain, new, handed = SpeechBuffer(1.0, 1.0), np.zeros(0, np.float32), 0, 0
    for i in range(400):
        chunk = rng.standard_normal(40000 if i == 200 else int(rng.integers(0, 2500))).astype(np.float32)
        got = buffer.push(chunk)
        expected = None
        if len(chunk):
            plain, new = np.concatenate([plain, chunk])[-buffer.size:], new + len(chunk)
            if new >= buffer.step and len(plain) >= buffer.min_samples:
                new, expected = 0, fit_length(plain, buffer.size)
        assert (got is None) == (expected is None), i
        if got is not None:
            assert np.array_equal(got, expected), i
            handed += 1
    assert handed > 20
