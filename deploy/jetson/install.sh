#!/usr/bin/env bash
# Install the emotion appliance on an NVIDIA Jetson (JetPack 5 or 6) as a hardened systemd service.
#
#   sudo deploy/jetson/install.sh --purpose customer-experience --jurisdiction DE
#                                 [--dry-run] [--force] [--no-start] [--prefix /opt/appliance]
#                                 [--config-dir /etc/appliance] [--user appliance] [--ort-index URL]
#   deploy/jetson/install.sh --print-config --purpose P --jurisdiction J   # the config it would write
#
# Idempotent: every step checks what is already there; an existing /etc/appliance/config.toml is never
# overwritten. --dry-run prints every action instead of doing it. On a machine that is not a Jetson it stops
# with an explanation unless --force is given.
set -euo pipefail

SOURCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PREFIX=/opt/appliance
CONFIG_DIR=/etc/appliance
SERVICE_USER=appliance
STATE_DIR=/var/lib/appliance
CACHE_DIR=/var/cache/appliance
UNIT_DIR=/etc/systemd/system
DRY_RUN=0
FORCE=0
START=1
PRINT_CONFIG=0
PURPOSE=""
JURISDICTION=""
# Where L4T records its release; overridable so the Jetson path can be dry-run on another machine (the tests do).
NV_TEGRA_RELEASE=${NV_TEGRA_RELEASE:-/etc/nv_tegra_release}
# onnxruntime-gpu for JetPack (with the TensorRT and CUDA execution providers) is not on PyPI; NVIDIA's Jetson AI
# Lab publishes wheels per JetPack release. Override with --ort-index for a mirror.
ORT_INDEX=""

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --force) FORCE=1 ;;
        --no-start) START=0 ;;
        --print-config) PRINT_CONFIG=1 ;;
        --prefix) PREFIX=$2; shift ;;
        --config-dir) CONFIG_DIR=$2; shift ;;
        --user) SERVICE_USER=$2; shift ;;
        --ort-index) ORT_INDEX=$2; shift ;;
        --purpose) PURPOSE=$2; shift ;;
        --jurisdiction) JURISDICTION=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

VENV=$PREFIX/venv
APP_SRC=$PREFIX/src

say() { printf '==> %s\n' "$*"; }

# Every change to the system goes through run: printed under --dry-run, executed otherwise.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '    would run: %s\n' "$*"
    else
        "$@"
    fi
}

# write_file PATH MODE: content on stdin.
write_file() {
    local path=$1 mode=$2 content
    content=$(cat)
    if [ "$DRY_RUN" = 1 ]; then
        printf '    would write %s (mode %s, %d bytes)\n' "$path" "$mode" "${#content}"
    else
        printf '%s\n' "$content" > "$path"
        chmod "$mode" "$path"
    fi
}

render_config() {
    local device_id
    device_id=$(hostname -s 2>/dev/null | tr -c 'A-Za-z0-9_.\n-' '-' | cut -c1-64)
    [ -n "$device_id" ] || device_id=kiosk-1
    sed -e "s|^id = \"kiosk-demo\".*|id = \"${device_id}\"            # unique per unit; part of every MQTT topic|" \
        -e 's|^source = "demo".*|source = "csi:0"              # CSI sensor 0; "usb:/dev/video0" for a USB camera|' \
        -e 's|^source = "auto".*|source = "mic"                # the default input device; "mic:NAME" to pick one|' \
        -e "s|^engine_cache_dir = .*|engine_cache_dir = \"${CACHE_DIR}/trt-engines\"|" \
        -e "s|^dir = \"~/.local/state/appliance\"|dir = \"${STATE_DIR}/state\"|" \
        -e "s|^# purpose = \"customer-experience\".*|purpose = \"${PURPOSE:-SET-ME}\"|" \
        -e "s|^# jurisdiction = \"DE\".*|jurisdiction = \"${JURISDICTION:-SET-ME}\"|" \
        "$SOURCE_DIR/appliance/config.example.toml"
}

if [ -z "$PURPOSE" ] || [ -z "$JURISDICTION" ]; then
    msg="--purpose and --jurisdiction are required: emotion recognition is regulated, and the unit refuses to start
  without them (e.g. --purpose customer-experience --jurisdiction DE; see README, Privacy)"
    if [ "$DRY_RUN" = 1 ] || [ "$PRINT_CONFIG" = 1 ]; then
        echo "install.sh: note: $msg" >&2
    else
        echo "install.sh: $msg" >&2
        exit 2
    fi
fi

if [ "$PRINT_CONFIG" = 1 ]; then
    render_config
    exit 0
fi

# ---------------------------------------------------------------------------------------------- platform
detect_jetpack() {
    # /etc/nv_tegra_release: "# R36 (release), REVISION: 4.0, GCID: ..., BOARD: generic, ..."
    local line major revision
    if [ ! -r "$NV_TEGRA_RELEASE" ]; then
        return 1
    fi
    line=$(head -n 1 "$NV_TEGRA_RELEASE")
    major=$(printf '%s' "$line" | sed -n 's/^# R\([0-9]*\) .*/\1/p')
    revision=$(printf '%s' "$line" | sed -n 's/.*REVISION: \([0-9.]*\).*/\1/p')
    L4T_VERSION="$major.$revision"
    case "$major" in
        36) JETPACK=6 ;;
        35) JETPACK=5 ;;
        *) JETPACK=unknown ;;
    esac
}

L4T_VERSION=none
JETPACK=none
ARCH=$(uname -m)
if detect_jetpack; then
    say "Jetson: L4T $L4T_VERSION (JetPack $JETPACK), $ARCH"
else
    if [ "$FORCE" != 1 ]; then
        echo "install.sh: this is not a Jetson (no $NV_TEGRA_RELEASE; $ARCH)." >&2
        echo "  The service needs JetPack's TensorRT, CUDA and GStreamer-enabled OpenCV." >&2
        echo "  Use --dry-run --force to see the plan here, or --force to install a CPU-only unit." >&2
        exit 1
    fi
    say "not a Jetson ($ARCH): --force given, installing a CPU-only unit (no TensorRT)"
fi

if [ -z "$ORT_INDEX" ]; then
    case "$JETPACK" in
        6) ORT_INDEX=https://pypi.jetson-ai-lab.io/jp6/cu126 ;;
        5) ORT_INDEX=https://pypi.jetson-ai-lab.io/jp5/cu114 ;;
    esac
fi

if [ "$(id -u)" != 0 ] && [ "$DRY_RUN" != 1 ]; then
    echo "install.sh: run as root (sudo), or with --dry-run to see the plan" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------------- packages
say "system packages"
APT_PACKAGES=(python3-venv python3-pip python3-dev portaudio19-dev libasound2-plugins alsa-utils v4l-utils
              gstreamer1.0-tools mosquitto-clients rsync)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
    say "  all present: ${APT_PACKAGES[*]}"
fi

# ---------------------------------------------------------------------------------------------- user, dirs
say "service user and directories"
if id "$SERVICE_USER" >/dev/null 2>&1; then
    say "  user $SERVICE_USER exists"
else
    run useradd --system --home-dir "$STATE_DIR" --shell /usr/sbin/nologin --groups video,audio "$SERVICE_USER"
fi
for dir in "$PREFIX" "$CONFIG_DIR"; do
    [ -d "$dir" ] || run install -d -m 0755 "$dir"
done
for dir in "$STATE_DIR" "$CACHE_DIR"; do
    [ -d "$dir" ] || run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$dir"
done

# The service may hold CPUs out of deep idle states while its loop runs (loop.cpu_wakeup_latency_us): that is a
# write to /dev/cpu_dma_latency, root-only by default. Give the service's group write access, now and at boot.
UDEV_RULE=/etc/udev/rules.d/70-appliance-cpu-latency.rules
printf 'KERNEL=="cpu_dma_latency", GROUP="%s", MODE="0660"\n' "$SERVICE_USER" | write_file "$UDEV_RULE" 0644
if [ -e /dev/cpu_dma_latency ]; then
    run chgrp "$SERVICE_USER" /dev/cpu_dma_latency
    run chmod 0660 /dev/cpu_dma_latency
fi

# ---------------------------------------------------------------------------------------------- software
say "application in $APP_SRC, venv in $VENV"
run rsync -a --delete --exclude .git --exclude .venv --exclude '__pycache__' "$SOURCE_DIR/" "$APP_SRC/"
if [ ! -x "$VENV/bin/python" ]; then
    # --system-site-packages: JetPack's tensorrt and GStreamer-enabled cv2 live in the system Python.
    run python3 -m venv --system-site-packages "$VENV"
fi
run "$VENV/bin/pip" install --quiet --upgrade pip
run "$VENV/bin/pip" install --quiet "$APP_SRC"
if [ "$JETPACK" != none ]; then
    # mediapipe pulls pip's OpenCV, which has no GStreamer and would shadow JetPack's: remove it.
    run "$VENV/bin/pip" uninstall --yes --quiet opencv-python opencv-contrib-python opencv-python-headless
fi
# The voice's anger encoder (Smart Turn v3.2, 8 MB) is not in git: taken from its pinned wheel, checked against the
# manifest's sha256 (the recipe stops on a mismatch); written again when an update changed the manifest's file.
ENCODER=$APP_SRC/models/onnx/voice_anger_encoder/encoder.onnx
encoder_is_current() {
    [ -f "$ENCODER" ] && [ "$(sha256sum < "$ENCODER" | cut -d' ' -f1)" = "$(python3 -c \
        'import json, sys; print(json.load(open(sys.argv[1]))["encoder"]["sha256"])' \
        "$(dirname "$ENCODER")/manifest.json" 2>/dev/null)" ]
}
if ! encoder_is_current || [ "$DRY_RUN" = 1 ]; then
    say "voice anger encoder from pipecat-ai==1.14.0 (pip download, ~12 MB)"
    run "$VENV/bin/pip" install --quiet "onnx>=1.15"
    run "$VENV/bin/python" "$APP_SRC/models/recipes/voice_anger_encoder.py" --encoder-only \
        --out "$(dirname "$ENCODER")" --work "$APP_SRC/.cache/voice_anger_encoder"
fi
if [ -n "$ORT_INDEX" ]; then
    run "$VENV/bin/pip" uninstall --yes --quiet onnxruntime
    run "$VENV/bin/pip" install --quiet --index-url "$ORT_INDEX" onnxruntime-gpu
else
    say "  no Jetson onnxruntime-gpu index for JetPack $JETPACK: keeping the CPU onnxruntime"
fi

# ---------------------------------------------------------------------------------------------- config
CONFIG=$CONFIG_DIR/config.toml
if [ -f "$CONFIG" ]; then
    say "config $CONFIG exists: kept as it is"
else
    say "config $CONFIG from the template"
    render_config | write_file "$CONFIG" 0640
    run chgrp "$SERVICE_USER" "$CONFIG"
fi
run "$VENV/bin/appliance" config validate --config "$CONFIG"

# ---------------------------------------------------------------------------------------------- engines
if [ -n "$ORT_INDEX" ]; then
    say "TensorRT engines (first build takes minutes)"
    run runuser -u "$SERVICE_USER" -- env HOME="$STATE_DIR" "$VENV/bin/appliance" models build-engines \
        --config "$CONFIG"
fi

# ---------------------------------------------------------------------------------------------- clock
# A Jetson has no battery-backed clock on most carrier boards: until NTP answers, the time is the last one saved.
# The unit wants time-sync.target; systemd-time-wait-sync holds that target until NTP has set the clock, at most
# 90 s here, so a unit without a network still starts (it follows a later step by itself: README 'Delivery').
WAIT_SYNC_DROPIN=$UNIT_DIR/systemd-time-wait-sync.service.d/appliance.conf
if systemctl cat systemd-time-wait-sync.service >/dev/null 2>&1 || [ "$DRY_RUN" = 1 ]; then
    say "clock: wait up to 90 s at boot for NTP (systemd-time-wait-sync)"
    [ -d "$(dirname "$WAIT_SYNC_DROPIN")" ] || run install -d -m 0755 "$(dirname "$WAIT_SYNC_DROPIN")"
    printf '[Service]\nTimeoutStartSec=90s\n' | write_file "$WAIT_SYNC_DROPIN" 0644
    run systemctl enable systemd-time-wait-sync.service
else
    say "clock: no systemd-time-wait-sync on this system; the unit starts without waiting for NTP"
fi

# ---------------------------------------------------------------------------------------------- service
say "systemd unit"
sed -e "s#/opt/appliance#${PREFIX}#g" -e "s#/etc/appliance/config.toml#${CONFIG}#g" \
    -e "s#^User=appliance#User=${SERVICE_USER}#" -e "s#^Group=appliance#Group=${SERVICE_USER}#" \
    "$SOURCE_DIR/systemd/appliance.service" | write_file "$UNIT_DIR/appliance.service" 0644
run systemctl daemon-reload
if [ "$START" = 1 ]; then
    run systemctl enable --now appliance.service
else
    run systemctl enable appliance.service
fi

say "done. Check the unit with: appliance doctor --config $CONFIG ; journalctl -u appliance -f"
