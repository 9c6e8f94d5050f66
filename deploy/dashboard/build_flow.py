"""Writes flows.json and flows_cred.json, the Node-RED flow of the fleet dashboard, from the readable parts below
(the Vue templates of the table and the alert feed, and the function nodes' code). Edit here, then run
``python deploy/dashboard/build_flow.py``; tests/test_deploy.py fails while flows.json differs from what this writes.
The flow's logic lives in fleet.js; these function nodes only call it."""

import json
from pathlib import Path
TABLE = r'''<template>
  <div class="fleet">
    <div class="fleet-counts" data-test="counts">
      {{ c.units }} units: {{ c.online }} online, {{ c.paused }} paused, {{ c.offline }} offline<span v-if="c.invalid">;
      {{ c.invalid }} invalid payloads dropped (last: {{ c.lastInvalid }})</span>
    </div>
    <table class="fleet-table">
      <thead>
        <tr>
          <th>unit</th><th>state</th><th>last summary</th><th>anger now</th><th>faces</th><th>alerts 1 h</th>
          <th>misses</th><th>CPU %</th><th>temp °C</th><th>problems</th><th></th><th>last reply</th>
        </tr>
      </thead>
      <tbody>
        <tr v-for="r in rows" :key="r.id" :data-unit="r.id" :class="'state-' + r.state">
          <td class="unit" :title="'version ' + r.version">{{ r.id }}</td>
          <td class="state" data-test="state">
            <span :class="'badge badge-' + r.state">{{ r.state }}</span>
            <div v-if="r.pausedBy" class="detail">by {{ r.pausedBy }}</div>
            <div v-if="r.offlineReason" class="detail">{{ r.offlineReason }}</div>
          </td>
          <td>{{ r.summaryAge }}<span v-if="r.summaryAge !== '-'"> ago</span></td>
          <td class="anger" data-test="anger">{{ r.anger }}<div v-if="r.suppressed" class="detail">{{ r.suppressed }}</div></td>
          <td>{{ r.faces }}</td>
          <td>{{ r.alertsHour }}</td>
          <td data-test="misses">{{ r.misses }}</td>
          <td>{{ r.cpu }}</td>
          <td>{{ r.temperature }}</td>
          <td class="problems"><div v-for="p in r.problems" :key="p.key" :title="p.text" class="problem">{{ p.key }}</div></td>
          <td class="actions">
            <v-btn size="small" variant="tonal" data-test="pause" :disabled="r.state !== 'online'"
                   @click="send({payload: {action: 'pause', unit: r.id}})">Pause</v-btn>
            <v-btn size="small" variant="tonal" data-test="resume" :disabled="r.state !== 'paused'"
                   @click="send({payload: {action: 'resume', unit: r.id}})">Resume</v-btn>
          </td>
          <td class="reply" data-test="reply" :class="r.reply && !r.reply.ok ? 'reply-error' : ''">
            {{ r.reply ? r.reply.text : '' }}
          </td>
        </tr>
      </tbody>
    </table>
    <div v-if="!rows.length" class="empty">No unit has published yet on this broker.</div>
  </div>
</template>

<script>
export default {
    computed: {
        rows () { return (this.msg && Array.isArray(this.msg.payload)) ? this.msg.payload : [] },
        c () { return (this.msg && this.msg.counts) || { units: 0, online: 0, paused: 0, offline: 0, invalid: 0 } }
    }
}
</script>

<style>
.fleet-table { border-collapse: collapse; width: 100%; font-size: 14px; }
.fleet-table th, .fleet-table td { border-bottom: 1px solid #e5e5ea; padding: 4px 8px; text-align: left; vertical-align: top; }
.fleet-table th { font-weight: 600; color: #555; }
.fleet .version, .fleet .detail { font-size: 11px; color: #777; }
.fleet .badge { padding: 1px 8px; border-radius: 10px; font-weight: 600; }
.fleet .badge-online { background: #d8f5dd; color: #0d6e26; }
.fleet .badge-paused { background: #fff1c2; color: #7a5b00; }
.fleet .badge-offline, .fleet .badge-unknown { background: #eee; color: #555; }
.fleet .problem { color: #b00020; font-weight: 600; }
.fleet .reply-error { color: #b00020; }
.fleet .fleet-counts { margin-bottom: 6px; color: #444; }
.fleet .actions { white-space: nowrap; }
</style>
'''

FEED = r'''<template>
  <div class="alert-feed">
    <div v-if="!items.length" class="empty">No alert yet.</div>
    <div v-for="(a, i) in items" :key="i" class="alert-item" data-test="alert">
      <b>{{ a.unit }}</b> {{ a.at.replace('T', ' ').replace('Z', '') }} UTC: anger {{ a.anger.toFixed(2) }}
      <span class="detail">(face {{ a.face === null ? '-' : a.face.toFixed(2) }}, voice {{ a.voice === null ? '-' : a.voice.toFixed(2) }}{{ a.historical ? ', sent late' : '' }})</span>
    </div>
  </div>
</template>
<script>
export default {
    computed: { items () { return (this.msg && Array.isArray(this.msg.payload)) ? this.msg.payload : [] } }
}
</script>
<style>
.alert-feed .alert-item { border-bottom: 1px solid #eee; padding: 3px 0; font-size: 13px; }
.alert-feed .detail { color: #777; }
</style>
'''

INGEST = r'''// Every message from the broker: validated against its topic's schema and kept in the fleet state (fleet.js).
const fleet = global.get('fleet')
let state = flow.get('state')
if (!state) {
    state = fleet.newState()
    flow.set('state', state)
}
const seen = fleet.ingest(state, global.get('validators'), env.get('EMOTION_PREFIX'), msg.topic, msg.payload, Date.now())
if (!seen) {
    return null
}
const p = seen.payload
const chart = seen.kind === 'summary' && typeof p.anger_index === 'number'
    ? { topic: seen.unit, payload: p.anger_index, timestamp: Date.parse(p.window_end) } : null
const toast = seen.kind === 'reply'
    ? { payload: `${seen.unit}: ${p.command || 'command'} ${p.ok ? 'ok, now ' + p.state : 'refused: ' + p.error}` } : null
return [chart, toast]
'''

RENDER = r'''// Once a second: the table and the alert feed from the fleet state (ages and "last hour" move with the clock).
const fleet = global.get('fleet')
const state = flow.get('state') || fleet.newState()
return [{ payload: fleet.rows(state, Date.now()), counts: fleet.counts(state) }, { payload: state.feed }]
'''

COMMAND = r'''// A pause or resume button -> the documented command, with a request_id the reply will carry.
const fleet = global.get('fleet')
let state = flow.get('state')
if (!state) {
    state = fleet.newState()
    flow.set('state', state)
}
const a = msg.payload || {}
let out
try {
    out = fleet.command(state, env.get('EMOTION_PREFIX'), a.unit, a.action, Date.now(),
        Math.random().toString(36).slice(2, 8))
} catch (e) {
    node.warn(e.message)
    return null
}
node.log(`sent ${a.action} to ${a.unit} (request ${out.requestId})`)
return [{ topic: out.topic, payload: out.payload, qos: 1, retain: false },
    { payload: `${a.action} sent to ${a.unit}` }]
'''

TAB = "fleet_tab"
NODES = [
    {"id": TAB, "type": "tab", "label": "Fleet", "disabled": False,
     "info": "The emotion appliance fleet dashboard. Reads only the published topics (README, MQTT contract); "
             "logic in deploy/dashboard/fleet.js; settings from the environment (deploy/dashboard/settings.js)."},
    {"id": "fleet_broker", "type": "mqtt-broker", "name": "fleet broker (BROKER)", "broker": "${MQTT_URL}",
     "port": "", "clientid": "${MQTT_CLIENT_ID}", "autoConnect": True, "usetls": True, "tls": "fleet_tls",
     "protocolVersion": "4", "keepalive": "30", "cleansession": True, "autoUnsubscribe": True,
     "birthTopic": "", "birthQos": "0", "birthRetain": "false", "birthPayload": "", "birthMsg": {},
     "closeTopic": "", "closeQos": "0", "closeRetain": "false", "closePayload": "", "closeMsg": {},
     "willTopic": "", "willQos": "0", "willRetain": "false", "willPayload": "", "willMsg": {},
     "userProps": "", "sessionExpiry": ""},
    # Only used for mqtts:// (the URL's scheme decides); empty paths: the system's CAs, no client certificate.
    {"id": "fleet_tls", "type": "tls-config", "name": "fleet TLS (MQTT_CA_FILE ...)", "cert": "${MQTT_CERT_FILE}",
     "key": "${MQTT_KEY_FILE}", "ca": "${MQTT_CA_FILE}", "certname": "", "keyname": "", "caname": "",
     "servername": "", "verifyservercert": True, "alpnprotocol": ""},
    {"id": "fleet_ui", "type": "ui-base", "name": "Emotion appliance fleet", "path": "/dashboard", "appIcon": "",
     "includeClientData": True, "acceptsClientConfig": ["ui-notification", "ui-control"],
     "showPathInSidebar": False, "headerContent": "page", "navigationStyle": "none", "titleBarStyle": "default",
     "showReconnectNotification": True, "notificationDisplayTime": 3, "showDisconnectNotification": True,
     "allowInstall": False},
    {"id": "fleet_theme", "type": "ui-theme", "name": "Fleet",
     "colors": {"surface": "#1f3a5f", "primary": "#0d74ce", "bgPage": "#f4f5f7", "groupBg": "#ffffff",
                "groupOutline": "#d9d9e0"},
     "sizes": {"density": "compact", "pagePadding": "12px", "groupGap": "12px", "groupBorderRadius": "4px",
               "widgetGap": "8px"}},
    {"id": "fleet_page", "type": "ui-page", "name": "Fleet", "ui": "fleet_ui", "path": "/fleet", "icon": "store",
     "layout": "grid", "theme": "fleet_theme",
     "breakpoints": [{"name": "Default", "px": "0", "cols": "3"}, {"name": "Tablet", "px": "576", "cols": "6"},
                     {"name": "Small Desktop", "px": "768", "cols": "9"}, {"name": "Desktop", "px": "1024", "cols": "12"}],
     "order": 1, "className": "", "visible": "true", "disabled": "false"},
    {"id": "group_units", "type": "ui-group", "name": "Units", "page": "fleet_page", "width": "12", "height": "1",
     "order": 1, "showTitle": True, "className": "", "visible": "true", "disabled": "false", "groupType": "default"},
    {"id": "group_chart", "type": "ui-group", "name": "Anger index, last hour", "page": "fleet_page", "width": "8",
     "height": "1", "order": 2, "showTitle": True, "className": "", "visible": "true", "disabled": "false",
     "groupType": "default"},
    {"id": "group_alerts", "type": "ui-group", "name": "Alerts", "page": "fleet_page", "width": "4", "height": "1",
     "order": 3, "showTitle": True, "className": "", "visible": "true", "disabled": "false", "groupType": "default"},

    {"id": "in_fleet", "type": "mqtt in", "z": TAB, "name": "<prefix>/+/+", "topic": "${FLEET_TOPIC}", "qos": "1",
     "datatype": "utf8", "broker": "fleet_broker", "nl": False, "rap": True, "rh": 0, "inputs": 0,
     "x": 130, "y": 100, "wires": [["fn_ingest"]]},
    {"id": "fn_ingest", "type": "function", "z": TAB, "name": "validate and keep", "func": INGEST, "outputs": 2,
     "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [], "x": 340, "y": 100,
     "wires": [["ui_chart"], ["ui_toast"]]},
    {"id": "tick", "type": "inject", "z": TAB, "name": "every second", "props": [], "repeat": "1", "crontab": "",
     "once": True, "onceDelay": "0.5", "topic": "", "x": 130, "y": 200, "wires": [["fn_render"]]},
    {"id": "fn_render", "type": "function", "z": TAB, "name": "table and feed", "func": RENDER, "outputs": 2,
     "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [], "x": 330, "y": 200,
     "wires": [["ui_table"], ["ui_feed"]]},
    {"id": "ui_table", "type": "ui-template", "z": TAB, "group": "group_units", "page": "", "ui": "",
     "name": "fleet table", "order": 1, "width": "12", "height": "0", "head": "", "format": TABLE,
     "storeOutMessages": False, "passthru": False, "resendOnRefresh": True, "templateScope": "local",
     "className": "", "x": 560, "y": 200, "wires": [["fn_command"]]},
    {"id": "ui_feed", "type": "ui-template", "z": TAB, "group": "group_alerts", "page": "", "ui": "",
     "name": "alert feed", "order": 1, "width": "4", "height": "0", "head": "", "format": FEED,
     "storeOutMessages": False, "passthru": False, "resendOnRefresh": True, "templateScope": "local",
     "className": "", "x": 550, "y": 240, "wires": [[]]},
    {"id": "fn_command", "type": "function", "z": TAB, "name": "pause / resume", "func": COMMAND, "outputs": 2,
     "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [], "x": 760, "y": 200,
     "wires": [["out_cmd"], ["ui_toast"]]},
    {"id": "out_cmd", "type": "mqtt out", "z": TAB, "name": "<prefix>/<unit>/cmd/...", "topic": "", "qos": "1",
     "retain": "false", "respTopic": "", "contentType": "", "userProps": "", "correl": "", "expiry": "",
     "broker": "fleet_broker", "x": 980, "y": 200, "wires": []},
    {"id": "ui_chart", "type": "ui-chart", "z": TAB, "group": "group_chart", "name": "anger index",
     "label": "anger index per unit (each summary window)", "order": 1, "chartType": "line", "category": "topic",
     "categoryType": "msg", "xAxisLabel": "", "xAxisProperty": "timestamp", "xAxisPropertyType": "msg",
     "xAxisType": "time", "xAxisFormat": "", "xAxisFormatType": "HH:mm", "xmin": "", "xmax": "",
     "yAxisLabel": "", "yAxisProperty": "payload", "yAxisPropertyType": "msg", "ymin": "0", "ymax": "1",
     "bins": 10, "action": "append", "stackSeries": False, "pointShape": "circle", "pointRadius": 2,
     "showLegend": True, "removeOlder": "1", "removeOlderUnit": "3600", "removeOlderPoints": "",
     "colors": ["#0095FF", "#FF0000", "#FF7F0E", "#2CA02C", "#A347E1", "#D62728", "#FF9896", "#9467BD", "#C5B0D5"],
     "textColor": ["#666666"], "textColorDefault": True, "gridColor": ["#e5e5e5"], "gridColorDefault": True,
     "width": "8", "height": "6", "className": "", "interpolation": "linear", "x": 560, "y": 80, "wires": [[]]},
    {"id": "ui_toast", "type": "ui-notification", "z": TAB, "ui": "fleet_ui", "position": "top right",
     "colorDefault": True, "color": "#000000", "displayTime": "4", "showCountdown": True, "outputs": 0,
     "allowDismiss": True, "dismissText": "Close", "allowConfirm": False, "confirmText": "Confirm",
     "raw": False, "className": "", "name": "replies", "x": 560, "y": 140, "wires": []},
]
CREDENTIALS = {"fleet_broker": {"user": "${MQTT_USERNAME}", "password": "${MQTT_PASSWORD}"}}
HERE = Path(__file__).resolve().parent


def render() -> dict[str, str]:
    return {"flows.json": json.dumps(NODES, indent=4) + "\n", "flows_cred.json": json.dumps(CREDENTIALS, indent=4) + "\n"}


if __name__ == "__main__":
    for name, text in render().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")
