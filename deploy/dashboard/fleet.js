// The dashboard's model of the fleet, kept out of the flow so that it can be read and tested as code: every
// message the broker hands over goes through `ingest`, the table is `rows`, the alert feed `alerts`, a button press
// `command`. Only the published topics are read, and a payload that is not valid for its topic (the JSON Schemas
// in appliance/schemas) is counted and dropped, never shown: a dashboard must not draw what a unit did not say.
'use strict'

const fs = require('fs')
const path = require('path')

const KINDS = ['summary', 'alert', 'status', 'stats', 'reply']
const HOUR_MS = 3600 * 1000
const MAX_FEED = 50

// Compiled validators, one per topic kind, from the schema files the units are tested against.
function loadValidators (schemaDir) {
    const Ajv2020 = require('ajv/dist/2020')
    // Formats (date-time) are not checked: the units' own tests do that, and ajv-formats is not a dependency.
    const ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: false })
    const validators = {}
    for (const kind of KINDS) {
        const file = path.join(schemaDir, `${kind}.schema.json`)
        validators[kind] = ajv.compile(JSON.parse(fs.readFileSync(file, 'utf8')))
    }
    return validators
}

function newState () {
    return { units: {}, invalid: 0, lastInvalid: null, feed: [], pending: {} }
}

function unitOf (state, id) {
    if (!state.units[id]) {
        state.units[id] = {
            id,
            status: null,          // the last status payload (retained: offline units show too)
            summary: null,         // the last summary
            summaryAt: null,       // when it arrived (ms)
            stats: null,
            alerts: [],            // arrival times (ms) of alerts, the last hour
            reply: null            // the last reply, with the request it answers
        }
    }
    return state.units[id]
}

// One MQTT message -> the state, and what it means for the screen: null (ignored or invalid), or
// { kind, unit, payload } for a valid one. `prefix` is the topic prefix ('emotion').
function ingest (state, validators, prefix, topic, text, now) {
    const parts = String(topic).split('/')
    if (parts.length !== 3 || parts[0] !== prefix || !KINDS.includes(parts[2])) {
        return null                 // cmd/* (ours or another dashboard's) and foreign topics
    }
    const [, id, kind] = parts
    let payload
    try {
        payload = typeof text === 'string' || Buffer.isBuffer(text) ? JSON.parse(String(text)) : text
    } catch (e) {
        return invalid(state, topic, 'not JSON')
    }
    if (!validators[kind](payload)) {
        const err = validators[kind].errors && validators[kind].errors[0]
        return invalid(state, topic, err ? `${err.instancePath || '/'} ${err.message}` : 'invalid')
    }
    if (payload.device_id !== id) {
        return invalid(state, topic, `device_id ${payload.device_id} on another unit's topic`)
    }
    const unit = unitOf(state, id)
    if (kind === 'status') {
        unit.status = payload
    } else if (kind === 'summary') {
        // A summary sent late after an outage (historical) goes on the chart at its window's time, but does not
        // replace a newer one as "now".
        if (!unit.summary || payload.seq > unit.summary.seq) {
            unit.summary = payload
            unit.summaryAt = now
        }
    } else if (kind === 'stats') {
        if (!unit.stats || payload.seq > unit.stats.seq) {
            unit.stats = payload
        }
    } else if (kind === 'alert') {
        const at = Date.parse(payload.at) || now
        unit.alerts.push(at)
        state.feed.unshift({ unit: id, at: payload.at, anger: payload.anger_index, face: payload.face_anger,
            voice: payload.voice_anger, historical: payload.historical })
        state.feed.length = Math.min(state.feed.length, MAX_FEED)
    } else if (kind === 'reply') {
        const asked = payload.request_id && state.pending[payload.request_id]
        unit.reply = { ...payload, asked: asked ? asked.command : null, receivedAt: now }
        if (asked) {
            delete state.pending[payload.request_id]
        }
    }
    return { kind, unit: id, payload }
}

function invalid (state, topic, why) {
    state.invalid += 1
    state.lastInvalid = `${topic}: ${why}`
    return null
}

function ageText (ms) {
    if (ms === null || ms === undefined) return '-'
    const s = Math.max(0, Math.round(ms / 1000))
    if (s < 120) return `${s} s`
    if (s < 7200) return `${Math.round(s / 60)} min`
    return `${Math.round(s / 3600)} h`
}

function problems (status) {
    if (!status) return []
    return ['storage_error', 'delivery_stalled', 'duplicate_device_id']
        .filter((k) => status[k])
        .map((k) => ({ key: k, text: status[k] }))
}

// The table: one row per unit, sorted by id; everything a fleet manager reads at a glance.
function rows (state, now) {
    return Object.values(state.units).sort((a, b) => a.id.localeCompare(b.id)).map((u) => {
        const st = u.status
        u.alerts = u.alerts.filter((t) => now - t <= HOUR_MS)
        const state_ = st ? st.state : 'unknown'
        const summary = u.summary
        const stats = u.stats
        const reply = u.reply
        return {
            id: u.id,
            state: state_,
            offlineReason: st && st.state === 'offline' ? (st.reason || '') : '',
            pausedBy: st && st.paused_by ? st.paused_by.join(', ') : '',
            localPause: !!(st && st.paused_by && st.paused_by.some((p) => p !== 'remote')),
            version: st ? st.version : '',
            summaryAge: u.summaryAt === null ? '-' : ageText(now - u.summaryAt),
            anger: summary && typeof summary.anger_index === 'number' ? summary.anger_index.toFixed(2) : '-',
            suppressed: summary && summary.suppressed ? summary.suppressed_reason : '',
            faces: summary && summary.faces ? summary.faces.distinct_faces : '-',
            alertsHour: u.alerts.length,
            misses: stats ? stats.loop.deadline_misses : '-',
            temperature: stats && typeof stats.system.temperature_c === 'number'
                ? stats.system.temperature_c.toFixed(0) : '-',
            cpu: stats && typeof stats.system.cpu_percent === 'number' ? stats.system.cpu_percent.toFixed(0) : '-',
            problems: problems(st),
            reply: reply ? {
                text: `${reply.command || reply.asked || '?'}: ${reply.ok ? 'ok' : 'error'}` +
                    (reply.ok ? `, now ${reply.state}` : ` (${reply.error})`),
                ok: reply.ok,
                requestId: reply.request_id
            } : null
        }
    })
}

// A pause or resume press -> the MQTT message to send (QoS 1, not retained), and the request remembered so the
// reply can be matched to it.
function command (state, prefix, unit, action, now, nonce) {
    if (!['pause', 'resume'].includes(action)) {
        throw new Error(`unknown action ${action}`)
    }
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(unit)) {
        throw new Error(`not a device id: ${unit}`)
    }
    const requestId = `dash-${now.toString(36)}-${nonce}`
    state.pending[requestId] = { command: action, unit, at: now }
    for (const [id, p] of Object.entries(state.pending)) {
        if (now - p.at > HOUR_MS) delete state.pending[id]
    }
    return { topic: `${prefix}/${unit}/cmd/${action}`,
        payload: JSON.stringify({ request_id: requestId, reason: 'fleet dashboard' }),
        qos: 1, retain: false, requestId }
}

function counts (state) {
    const units = Object.values(state.units)
    const by = (s) => units.filter((u) => u.status && u.status.state === s).length
    return { units: units.length, online: by('online'), paused: by('paused'), offline: by('offline'),
        invalid: state.invalid, lastInvalid: state.lastInvalid }
}

module.exports = { KINDS, loadValidators, newState, ingest, rows, command, counts, ageText }
