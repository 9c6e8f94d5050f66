"""The signage text for a unit (EU AI Act Art. 50(3): people exposed to emotion recognition must be told)."""

from __future__ import annotations

from appliance.config import AppConfig

PURPOSES = {
    "customer-experience": "to notice when customers at this {place} become frustrated or angry, so that staff can "
                           "come and help, and to learn how customers feel here over time",
    "market-research": "to learn, in aggregate, how visitors react to this {place} over time",
    "workplace": "(workplace use)",
    "education": "(education use)",
}


def notice_text(cfg: AppConfig) -> str:
    place = "kiosk" if cfg.device.profile == "kiosk" else "area"
    purpose = PURPOSES[cfg.purpose].format(place=place)
    voice = cfg.audio.source != "none"
    k = cfg.k_min
    zones = len(cfg.privacy.exclusion_zones)
    lines = [
        "EMOTION ANALYSIS IN USE",
        "",
        f"This {place} uses a camera{' and a microphone' if voice else ''} to estimate emotions from facial "
        f"expressions{' and tone of voice' if voice else ''}, {purpose}.",
        "",
        "What is measured: the probability of seven facial expressions (angry, disgust, fear, happy, sad, surprise, "
        "neutral)" + (" and eight tones of voice" if voice else "") + ". Who you are is not: no face recognition, "
        "no identification, no tracking beyond a few seconds in the device's memory.",
        "What is stored: nothing about you. Images" + (" and sound" if voice else "") + " are analysed in the "
        "device's memory and discarded within a fraction of a second; nothing is recorded.",
        f"What is sent: only averages over {cfg.aggregate.window_s:g}-second periods"
        + (f" that include at least {k} different people" if k > 1 else "") + "; a period with too little data "
        "is sent without any emotion figures." + (" When anger rises sharply, staff get an alert with a single "
                                                   "number (no image, no sound, no identity)."
                                                   if cfg.alerts_enabled else ""),
        "Retention: the device keeps no personal data. The averages are kept by the operator as statistics.",
    ]
    if zones:
        lines.append(f"Staff areas ({zones} zone{'s' if zones > 1 else ''}) are excluded from analysis.")
    lines += [
        "Your choice: ask staff to pause the unit, or press its pause button; while paused nothing is analysed.",
        "",
        f"Operated by: {cfg.privacy.controller or '(set privacy.controller)'}",
        f"Questions or objections: {cfg.privacy.contact or '(set privacy.contact)'}",
        f"Unit: {cfg.device.id}. Purpose: {cfg.purpose}. Jurisdiction: {cfg.privacy.jurisdiction or 'not set'}.",
    ]
    return "\n".join(lines)
