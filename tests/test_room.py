"""``appliance.tools.room``: the synthetic rooms ``appliance eval voice|sessions --room`` plays clips in measure as
asked (a meter's RT60, the direct-to-reverberant ratio, the speech-to-noise ratio), repeat per clip, and reject a
spec they cannot honour with the reason."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from appliance.sources.audio import SAMPLE_RATE, load_audio_file
from appliance.tools.room import FIRST_REFLECTION_S, Room, RoomError, impulse_response, speaking_rms
from conftest import DEMO, appliance_cmd, appliance_env

MUSIC = DEMO.with_suffix(".flac")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio_file(MUSIC)[: 4 * SAMPLE_RATE]


def schroeder_t20(h: np.ndarray) -> float:
    """RT60 as a room-acoustics meter reports it: the -5 to -25 dB slope of the backward-integrated decay, x 3."""
    energy = np.cumsum((h[1:] ** 2)[::-1])[::-1]
    db = 10 * np.log10(energy / energy[0])
    return 3 * (np.argmax(db < -25) - np.argmax(db < -5)) / SAMPLE_RATE


@pytest.mark.parametrize("rt60", [0.3, 0.8, 1.5])
def test_the_impulse_response_decays_as_a_meter_would_measure_it(rt60):
    for seed in (1, 2):
        h = impulse_response(rt60, 0.0, np.random.default_rng(seed))
        assert schroeder_t20(h) == pytest.approx(rt60, rel=0.08)


@pytest.mark.parametrize("drr", [-5.0, 0.0, 9.0])
def test_the_direct_sound_stands_above_the_tail_by_the_ratio_asked(drr):
    h = impulse_response(0.6, drr, np.random.default_rng(3))
    assert h[0] == 1.0 and not h[1:int(FIRST_REFLECTION_S * SAMPLE_RATE)].any()
    assert 10 * np.log10(1.0 / np.sum(h[1:] ** 2)) == pytest.approx(drr, abs=1e-6)


def test_noise_is_added_at_the_signal_to_noise_ratio_asked(speech):
    for spec, snr in (("snr=10", 10.0), (f"snr=0,noise={MUSIC}", 0.0)):
        noisy = Room.parse(spec).apply(speech * 0.5, "clip.wav")
        added = noisy.astype(np.float64) - speech * 0.5
        assert 20 * np.log10(speaking_rms(speech * 0.5) / np.sqrt(np.mean(added ** 2))) == pytest.approx(snr, abs=0.3)


def test_a_room_changes_how_a_voice_sounds_not_how_loud_it_is(speech):
    room = Room.parse("rt60=0.9,drr=0")
    wet = room.apply(speech, "a.wav")
    assert len(wet) == len(speech) and wet.dtype == np.float32
    assert speaking_rms(wet) == pytest.approx(speaking_rms(speech), rel=1e-3)
    assert np.corrcoef(wet, speech)[0, 1] < 0.9           # the tail is really there
    assert np.array_equal(wet, room.apply(speech, "a.wav"))  # one clip, one room: two models hear the same audio
    assert not np.array_equal(wet, room.apply(speech, "b.wav"))
    assert not np.array_equal(wet, Room.parse("rt60=0.9,drr=0,seed=1").apply(speech, "a.wav"))


@pytest.mark.parametrize("spec, reason", [
    ("rt60=5", "rt60: use 0 (none) or 0.1-3.0 s"),
    ("drr=40", "drr: Input should be less than or equal to 30"),
    ("snr=loud", "snr: Input should be a valid number"),
    ("reverb=1", "'reverb=1' is not KEY=VALUE with KEY one of rt60, drr, snr, noise, seed"),
    ("", "give at least rt60=SECONDS or snr=DB"),
    (f"noise={MUSIC}", "noise= needs snr=DB"),
    ("snr=5,noise=/nonexistent/shop.wav", "audio file /nonexistent/shop.wav does not exist"),
])
def test_a_spec_it_cannot_honour_is_refused_with_the_reason(spec, reason):
    with pytest.raises(RoomError) as e:
        Room.parse(spec)
    assert reason in str(e.value)


def test_a_noise_file_that_is_not_audio_is_refused_before_any_clip_is_played(tmp_path):
    bad = tmp_path / "shop.wav"
    bad.write_text("not audio")
    proc = subprocess.run(appliance_cmd("eval", "sessions", str(tmp_path), "--room", f"snr=5,noise={bad}"),
                          env=appliance_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot be decoded" in proc.stderr, proc.stderr


def test_eval_voice_plays_the_clips_in_the_room(tmp_path, data_dir):
    """The real models on one RAVDESS validation actor, dry and in a busy room: the report names the room and the
    anger it reads changes."""
    reports = []
    for extra in ([], ["--room", f"rt60=0.8,drr=0,snr=5,noise={MUSIC}"]):
        out = tmp_path / f"report{len(reports)}.json"
        proc = subprocess.run(appliance_cmd("eval", "voice", str(data_dir / "speech"), "--where", "speaker=ravdess-17",
                                            "--json", str(out), *extra),
                              env=appliance_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        reports.append(json.loads(out.read_text()))
    dry, wet = reports
    assert dry["n"] == wet["n"] == 60
    assert "in a room" not in dry["dataset"]
    assert wet["dataset"].endswith("in a room: RT60 0.8 s, DRR 0 dB, short_hamilton_clip.flac at SNR 5 dB")
    assert dry["angry_auc"] != wet["angry_auc"]


def test_eval_sessions_plays_each_session_in_the_room(tmp_path, data_dir):
    """One short angry session of a RAVDESS validation actor through the real daemon in a noisy room: it runs, and the
    report says which room it was played in."""
    out = tmp_path / "sessions.json"
    proc = subprocess.run(appliance_cmd("eval", "sessions", str(data_dir / "speech"), "--where", "speaker=ravdess-17",
                                        "--where", "label=angry", "--seconds", "12", "--room", "rt60=0.6,snr=10",
                                        "--json", str(out)),
                          env=appliance_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["room"] == "RT60 0.6 s, DRR 3 dB, pink noise at SNR 10 dB"
    assert len(report["sessions"]) == 1 and report["sessions"][0]["seconds"] >= 12
    assert "in a room: RT60 0.6 s, DRR 3 dB, pink noise at SNR 10 dB" in out.with_suffix(".md").read_text()


def test_the_room_training_copies_are_never_dry_and_read_as_one_array():
    """voice_room_train.py: every training clip's room has reverberation or noise (a dry copy would teach nothing),
    drawn the same for the same clip; its two frame stores read as one array, in either order of access."""
    from models.recipes.voice_room_train import Stacked, training_room

    wave = np.ones(SAMPLE_RATE, np.float32)
    draws = [training_room(f"corpus/clip{i}.wav", wave)[1:] for i in range(200)]
    assert all(rt60 > 0 or snr is not None for rt60, _, snr, _ in draws)
    assert sum(rt60 > 0 for rt60, *_ in draws) > 100 and sum(noise is None for *_, noise in draws) > 50
    assert training_room("corpus/clip7.wav", wave)[1:4] == draws[7][:3]
    a, b = np.arange(12).reshape(6, 2), np.arange(100, 108).reshape(4, 2)
    both = Stacked(a, b)
    assert len(both) == 10 and both.shape == (10, 2)
    assert np.array_equal(both[np.array([0, 5, 6, 9])], np.r_[a[[0, 5]], b[[0, 3]]])
    assert np.array_equal(both[4:8], np.r_[a[4:], b[:2]])
