"""Config: layering, and every bad key reported by its dotted path and origin, never as a traceback."""

from __future__ import annotations

import subprocess

import pytest

from appliance.config import EXAMPLE_CONFIG, AppConfig, ConfigError, load_config, to_toml
from conftest import appliance_cmd, appliance_env


def write(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_and_example_agree():
    # The annotated example that `config init` writes must mean exactly the defaults.
    assert load_config(EXAMPLE_CONFIG, env={}) == AppConfig()


def test_layers_file_then_env_then_cli(tmp_path):
    path = write(tmp_path, '[loop]\nrate_hz = 5\n[mqtt]\nbroker = "mqtt://file:1883"\n[device]\nid = "a"\n')
    cfg = load_config(path, env={"APPLIANCE_MQTT__BROKER": "mqtt://env:1883", "APPLIANCE_DEVICE__ID": "b"},
                      overrides={"device.id": "c"})
    assert cfg.loop.rate_hz == 5
    assert cfg.mqtt.broker == "mqtt://env:1883"
    assert cfg.device.id == "c"


def test_env_parses_json_lists():
    cfg = load_config(None, env={"APPLIANCE_RUNTIME__PROVIDERS": '["cpu"]'})
    assert cfg.runtime.providers == ["cpu"]


@pytest.mark.parametrize("text, path, words", [
    ('[camera]\nsorce = "x"\n', "camera.sorce", "unknown key"),
    ('[cameras]\nsource = "x"\n', "cameras", "unknown key"),
    ('[loop]\nrate_hz = "fast"\n', "loop.rate_hz", "valid number"),
    ('[faces]\nmax_faces = 0\n', "faces.max_faces", "greater than or equal to 1"),
    ('[runtime]\nproviders = ["tpu"]\n', "runtime.providers.0", "'tensorrt', 'cuda' or 'cpu'"),
    ('[device]\nid = "has space"\n', "device.id", "match pattern"),
    ('[mqtt]\nbroker = "ftp://x"\n', "mqtt.broker", "mqtt://"),
])
def test_bad_keys_name_their_path(tmp_path, text, path, words):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env={})
    issue = err.value.issues[0]
    assert issue.path == path and words in issue.message and str(tmp_path) in issue.source


def test_env_key_errors_name_the_variable():
    with pytest.raises(ConfigError) as err:
        load_config(None, env={"APPLIANCE_MQTT__BROKR": "x"})
    assert str(err.value.issues[0]) == "mqtt.brokr: unknown key (from env APPLIANCE_MQTT__BROKR)"


def test_store_camera_profile_cannot_go_below_k3(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, '[device]\nprofile = "store-camera"\n[aggregate]\nk_min = 2\n'), env={})
    assert err.value.issues[0].path == "aggregate.k_min" and "floor of 3" in str(err.value)
    assert str(tmp_path) in err.value.issues[0].source
    assert load_config(write(tmp_path, '[device]\nprofile = "store-camera"\n'), env={}).k_min == 3
    assert load_config(None, env={}).k_min == 1


def test_not_toml_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[loop\n"), env={})


def test_show_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, '[device]\nid = "unit-7"\n'), env={})
    assert load_config(write(tmp_path, to_toml(cfg)), env={}) == cfg


def test_cli_validate_exit_codes(tmp_path):
    env = appliance_env(tmp_path)
    bad = write(tmp_path, '[camera]\nsorce = "x"\n[loop]\nrate_hz = -1\n')
    proc = subprocess.run(appliance_cmd("config", "validate", "--config", str(bad)), env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "camera.sorce: unknown key" in proc.stderr and "loop.rate_hz: Input should be greater than 0" \
        in proc.stderr and "Traceback" not in proc.stderr
    init = tmp_path / "new.toml"
    assert subprocess.run(appliance_cmd("config", "init", str(init)), env=env).returncode == 0
    proc = subprocess.run(appliance_cmd("config", "validate", "--config", str(init)), env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "config OK" in proc.stdout
    proc = subprocess.run(appliance_cmd("config", "init", str(init)), env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "--force" in proc.stderr


@pytest.mark.parametrize("where, words", [
    ("folder", "is a folder; give the file in it"),
    ("/proc/self/mem", "cannot be read (Input/output error)"),      # a file every read of fails, even for root
])
def test_a_config_path_that_is_no_readable_file_is_one_clear_line(tmp_path, where, words):
    path = str(tmp_path) if where == "folder" else where
    for args, env in ((("--config", path), {}), ((), {"APPLIANCE_CONFIG": path})):
        proc = subprocess.run(appliance_cmd("config", "validate", *args), env=appliance_env(tmp_path, **env),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_window_shorter_than_the_observation_it_needs_is_refused():
    with pytest.raises(ConfigError) as e:
        load_config(None, env={"APPLIANCE_AGGREGATE__WINDOW_S": "1"})
    assert "min_observed_s (2) is longer than window_s (1)" in str(e.value.issues)
    load_config(None, env={"APPLIANCE_AGGREGATE__WINDOW_S": "1", "APPLIANCE_AGGREGATE__MIN_OBSERVED_S": "0.5"})
