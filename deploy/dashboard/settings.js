// Node-RED settings for the fleet dashboard (`make dashboard`). Everything a site changes comes from the
// environment or from files, never from editing the flow:
//
//   BROKER                 mqtt://host:port or mqtts://host:port (default mqtt://127.0.0.1:1883, the demo broker)
//   MQTT_USERNAME          user name on the broker (the `fleet` user of deploy/broker)
//   MQTT_PASSWORD_FILE     a file holding its password (or MQTT_PASSWORD, less safe: it shows in `ps e`)
//   MQTT_CA_FILE           CA certificate (PEM) for mqtts:// (default: the system's CAs)
//   MQTT_CERT_FILE, MQTT_KEY_FILE   a client certificate and its key, where the broker asks for one
//   MQTT_CLIENT_ID         default fleet-dashboard-<hostname>
//   EMOTION_PREFIX         topic prefix of the units (default emotion)
//   DASHBOARD_PORT         HTTP port (default 1880); DASHBOARD_HOST the address to listen on (default 127.0.0.1)
//   DASHBOARD_USER, DASHBOARD_PASSWORD_FILE   basic auth for the dashboard page (off unless both are set)
//   EDITOR_PASSWORD_FILE   turns the flow editor on at /editor, user `admin` with this password (off by default)
//
// A bad value stops the start with one line that names it.
'use strict'

const fs = require('fs')
const os = require('os')
const path = require('path')

const here = __dirname
const repo = path.resolve(here, '..', '..')

function fail (message) {
    console.error(`dashboard: ${message}`)
    process.exit(2)
}

function readSecret (name) {
    const file = process.env[name]
    if (!file) return null
    try {
        const text = fs.readFileSync(file, 'utf8').replace(/\r?\n$/, '')
        if (!text) fail(`${name}=${file} is empty`)
        return text
    } catch (e) {
        fail(`${name}=${file}: ${e.code === 'ENOENT' ? 'no such file' : e.message}`)
    }
}

function checkFile (name) {
    const file = process.env[name] || ''
    if (file && !fs.existsSync(file)) fail(`${name}=${file}: no such file`)
    process.env[name] = file            // an unset variable would reach the flow as the literal ${NAME}
}

const broker = process.env.BROKER || 'mqtt://127.0.0.1:1883'
const parsed = /^(mqtts?):\/\/(\[[0-9a-fA-F:]+\]|[^:/\s]+)(?::(\d{1,5}))?\/?$/.exec(broker)
if (!parsed || (parsed[3] && !(+parsed[3] >= 1 && +parsed[3] <= 65535))) {
    fail(`BROKER=${broker}: use mqtt://host:port or mqtts://host:port`)
}
process.env.MQTT_URL = `${parsed[1]}://${parsed[2]}:${parsed[3] || (parsed[1] === 'mqtts' ? 8883 : 1883)}`
process.env.MQTT_USERNAME = process.env.MQTT_USERNAME || ''
process.env.MQTT_PASSWORD = readSecret('MQTT_PASSWORD_FILE') || process.env.MQTT_PASSWORD || ''
for (const name of ['MQTT_CA_FILE', 'MQTT_CERT_FILE', 'MQTT_KEY_FILE']) checkFile(name)
if (!!process.env.MQTT_CERT_FILE !== !!process.env.MQTT_KEY_FILE) {
    fail('MQTT_CERT_FILE and MQTT_KEY_FILE go together')
}
process.env.MQTT_CLIENT_ID = process.env.MQTT_CLIENT_ID || `fleet-dashboard-${os.hostname()}`.slice(0, 64)
const prefix = process.env.EMOTION_PREFIX || 'emotion'
if (!/^[A-Za-z0-9_-]+$/.test(prefix)) fail(`EMOTION_PREFIX=${prefix}: letters, digits, - and _ only`)
process.env.EMOTION_PREFIX = prefix
process.env.FLEET_TOPIC = `${prefix}/+/+`

const port = Number(process.env.DASHBOARD_PORT || 1880)
if (!Number.isInteger(port) || port < 1 || port > 65535) fail(`DASHBOARD_PORT=${process.env.DASHBOARD_PORT}`)

const bcrypt = require('bcryptjs')
const hash = (secret) => bcrypt.hashSync(secret, 8)

const editorPassword = readSecret('EDITOR_PASSWORD_FILE')
const pagePassword = readSecret('DASHBOARD_PASSWORD_FILE')
if (!!pagePassword !== !!process.env.DASHBOARD_USER) fail('DASHBOARD_USER and DASHBOARD_PASSWORD_FILE go together')

const fleet = require('./fleet')

module.exports = {
    uiPort: port,
    uiHost: process.env.DASHBOARD_HOST || '127.0.0.1',
    flowFile: path.join(here, 'flows.json'),
    credentialSecret: false,                  // flows_cred.json holds only ${VAR} references, no secret
    flowFilePretty: true,
    httpAdminRoot: editorPassword ? '/editor' : false,   // false: no editor and no admin API at all
    adminAuth: editorPassword ? {
        type: 'credentials',
        users: [{ username: 'admin', password: hash(editorPassword), permissions: '*' }]
    } : undefined,
    httpNodeAuth: pagePassword ? { user: process.env.DASHBOARD_USER, pass: hash(pagePassword) } : undefined,
    telemetry: { enabled: false, updateNotification: false },
    diagnostics: { enabled: false },
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
    functionExternalModules: false,
    functionGlobalContext: {
        fleet,
        validators: fleet.loadValidators(path.join(repo, 'appliance', 'schemas'))
    },
    logging: { console: { level: process.env.DASHBOARD_LOG || 'info', metrics: false, audit: false } },
    editorTheme: { projects: { enabled: false }, tours: false }
}
