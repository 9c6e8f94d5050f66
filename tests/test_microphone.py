"""The real PyAudio path without a sound card: ALSA's `type file` PCM plays a file into the capture stream.

PortAudio reads ~/.asoundrc when it initialises, so each check runs in a subprocess with its own HOME.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import soundfile as sf

from conftest import DEMO, appliance_cmd, appliance_env

CAPTURE = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from appliance.sources.audio import AudioRing, MicSource

    class FirstSamples(AudioRing):
        # Keeps what arrived first: ALSA's null device behind the file plugin runs unpaced.
        def __init__(self, n):
            super().__init__(4.0)
            self.first, self.n = [], n
        def write(self, block):
            if sum(map(len, self.first)) < self.n:
                self.first.append(np.array(block))
            super().write(block)

    ring = FirstSamples(int(sys.argv[2]))
    mic = MicSource(None if sys.argv[1] == "-" else sys.argv[1], ring=ring, retry_initial_s=0.1).start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum(map(len, ring.first)) < ring.n:
        time.sleep(0.05)
    time.sleep(0.3)
    mic.stop()
    np.save(sys.argv[3], np.concatenate(ring.first) if ring.first else np.zeros(0, np.float32))
    print(json.dumps({"state": mic.state.value, "detail": mic.detail, "reopens": mic.reopens}))
""")


def alsa_home(tmp_path, audio: np.ndarray):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    raw = tmp_path / "mic.raw"
    (audio * 32767).astype("<i2").tofile(raw)
    (home / ".asoundrc").write_text(f'pcm.!default {{\n  type file\n  slave.pcm "null"\n  file "/dev/null"\n'
                                    f'  infile "{raw}"\n  format "raw"\n}}\n')
    return home


def run_capture(tmp_path, home, device: str, n: int):
    out = tmp_path / "captured.npy"
    proc = subprocess.run([sys.executable, "-c", CAPTURE, device, str(n), str(out)], capture_output=True, text=True,
                          timeout=60, env={**appliance_env(tmp_path), "HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(out)


def test_pyaudio_captures_the_real_samples(tmp_path):
    audio, _ = sf.read(DEMO.with_suffix(".flac"), dtype="float32")
    home = alsa_home(tmp_path, audio)
    info, captured = run_capture(tmp_path, home, "-", 3 * 16000)
    assert info["state"] == "ok"
    n = min(len(captured), 3 * 16000)
    assert n >= 3 * 16000
    expected = np.round(audio[:n] * 32767) / 32768
    # Bit-exact through PortAudio -> MicSource callback -> ring (int16 -> float32 scaling only).
    assert np.allclose(captured[:n], expected, atol=1.5 / 32768)
    assert np.abs(captured[:n]).max() > 0.1


def test_missing_microphone_is_retried_and_reported(tmp_path):
    home = alsa_home(tmp_path, np.zeros(16000, np.float32))
    info, captured = run_capture(tmp_path, home, "usb-headset-that-is-not-there", 16000)
    assert info["state"] == "retrying" and info["reopens"] >= 2 and len(captured) == 0
    assert "no input device matching 'usb-headset-that-is-not-there'" in info["detail"]


def test_daemon_keeps_seeing_when_the_microphone_is_missing(tmp_path, mosquitto, collect):
    home = alsa_home(tmp_path, np.zeros(16000, np.float32))
    watcher = collect(mosquitto.port, "emotion/#")
    env = appliance_env(tmp_path, HOME=str(home), APPLIANCE_AGGREGATE__WINDOW_S="3")
    proc = subprocess.run(appliance_cmd("run", "--video", str(DEMO), "--mic", "usb-headset-that-is-not-there",
                                        "--broker", mosquitto.url, "--duration", "7"),
                          env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no input device matching" in proc.stderr
    summaries = watcher.json("/summary")
    assert any(s["faces"] for s in summaries) and all(s["voice"] is None for s in summaries)
    assert any(s.get("microphone") == "retrying" for s in watcher.json("/status"))
