"""The privacy policy, in one place: which profile needs how many distinct faces (k), which purposes the EU AI Act
forbids, when a purpose must be declared, and who may have alerts. ``enforce`` applies it to a whole config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from appliance.section import FilePath, Section

# Deployment profiles fix the privacy floor: the minimum number of distinct faces a window needs before its
# distribution may leave the device.
PROFILE_MIN_K = {"kiosk": 1, "store-camera": 3}
# EU member states (ISO 3166-1 alpha-2): the EU AI Act applies in each of them.
EU_MEMBERS = {"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT",
              "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"}
Purpose = Literal["customer-experience", "market-research", "workplace", "education"]
DEMO_PURPOSE = "customer-experience"       # the bundled demo is a customer-experience kiosk


def is_live_camera(source: str) -> bool:
    """A camera that looks at people now (device, stream, pipeline), as opposed to a recorded file."""
    source = source.strip()
    return (source.isdigit() or "!" in source or "://" in source or source.startswith("/dev/")
            or source.split(":", 1)[0] in ("csi", "usb", "usb-raw"))


class PrivacyConfig(Section):
    purpose: Purpose | None = Field(default=None, description="required for any camera but the bundled demo")
    jurisdiction: str | None = Field(default=None, description="'EU', an ISO 3166-1 alpha-2 country code, or 'other'")
    controller: str = Field(default="", description="who runs the unit, for the notice")
    contact: str = Field(default="", description="where people ask or object, for the notice")
    exclusion_zones: list[list[tuple[float, float]]] = Field(
        default_factory=list, description="polygons in camera pixels (e.g. behind the counter), masked before "
        "face detection: no face there is ever analysed")
    pause_file: FilePath | None = Field(default=None, description="while this file exists the unit is paused; "
                                    "default: <state.dir>/paused (a GPIO button can create and remove it)")

    @field_validator("jurisdiction")
    @classmethod
    def _jurisdiction(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if v in ("EU", "other") or re.fullmatch(r"[A-Z]{2}", v):
            return v
        raise ValueError(f"{v!r} is not 'EU', 'other' or an ISO 3166-1 alpha-2 code (e.g. 'DE', 'US')")

    @field_validator("exclusion_zones")
    @classmethod
    def _polygons(cls, zones: list) -> list:
        for i, zone in enumerate(zones):
            if len(zone) < 3:
                raise ValueError(f"zone {i} has {len(zone)} points; a polygon needs at least 3")
        return zones

    @property
    def in_eu(self) -> bool:
        return self.jurisdiction == "EU" or self.jurisdiction in EU_MEMBERS


def enforce(camera_source: str, privacy: PrivacyConfig, profile: str, k_min: int | None,
            alerts_enabled: bool | None) -> None:
    """Raise ValueError (starting with the offending key's dotted path) where the config breaks the policy."""
    if is_live_camera(camera_source):
        for key in ("purpose", "jurisdiction"):
            if getattr(privacy, key) is None:
                raise ValueError(f"privacy.{key}: required for a live camera (recordings such as the demo run "
                                 "without); see `appliance notice` and the README's Privacy section")
    if privacy.purpose in ("workplace", "education") and privacy.in_eu:
        raise ValueError(
            f"privacy.purpose: '{privacy.purpose}' is prohibited in {privacy.jurisdiction}: the EU AI "
            "Act, Art. 5(1)(f), forbids emotion recognition in the workplace and in education institutions "
            "(except for medical or safety reasons, which this product does not serve)")
    if k_min is not None and required_k(profile, k_min) != k_min:
        raise ValueError(f"aggregate.k_min: {k_min} is below the '{profile}' profile's floor of "
                         f"{PROFILE_MIN_K[profile]} distinct faces")
    if alerts_enabled and not alerts_allowed(profile, privacy.purpose or DEMO_PURPOSE):
        raise ValueError("alerts.enabled: alerts exist only in the kiosk profile with purpose "
                         "customer-experience (an alert is about one customer's escalation, for staff to help; a "
                         "crowd profile or a research purpose must not single anyone out)")


def required_k(profile: str, k_min: int | None) -> int:
    """The distinct faces a window needs: the configured k, never below the profile's floor (validation refuses a
    lower one; this also holds for a config changed in code after validation)."""
    floor = PROFILE_MIN_K[profile]
    return max(k_min or floor, floor)


def alerts_allowed(profile: str, purpose: str) -> bool:
    return profile == "kiosk" and purpose == "customer-experience"
