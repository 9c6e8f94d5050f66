"""Which MQTT protocol to speak: MQTT 5 first under ``mqtt.protocol = "auto"``, 3.1.1 when the broker refuses 5
(that sticks) or never answers it (that is tried again after the next lost connection: the broker that answers
may be another one by then). Decides when the paho client must be built anew."""

from __future__ import annotations

UNSUPPORTED_PROTOCOL = {132, 1}   # MQTT 5 reason code / MQTT 3.1.1 CONNACK return code


class ProtocolChoice:
    def __init__(self, setting: str):
        self.setting = setting
        self.current = "5" if setting in ("auto", "5") else "3.1.1"
        self._confirmed = setting != "auto"     # a CONNACK came back in this protocol
        self._silent_fallback = False           # on 3.1.1 only because an MQTT 5 CONNECT went unanswered
        self._rebuild = False                   # the protocol changed: build a new client

    def confirmed(self) -> None:
        self._confirmed = True

    def refused(self, reason_code: int) -> bool:
        """A CONNACK refusal; True when it only says the broker wants 3.1.1 (switched, for good)."""
        self._confirmed = True
        if reason_code in UNSUPPORTED_PROTOCOL and self.setting == "auto" and self.current == "5":
            self.current, self._silent_fallback, self._rebuild = "3.1.1", False, True
            return True
        return False

    def lost(self, was_connected: bool) -> tuple[bool, bool, str]:
        """The connection is gone: (build a new client, retry at once, a note for the log)."""
        note = ""
        if was_connected:
            self._rebuild = True
            if self._silent_fallback:
                self._silent_fallback = False
                self.current, self._confirmed = "5", False
        if not was_connected and not self._confirmed and self.setting == "auto":
            # Some 3.1.1-only brokers drop an MQTT 5 CONNECT without answering it: try the other protocol next.
            self.current = "3.1.1" if self.current == "5" else "5"
            self._silent_fallback = self.current == "3.1.1"
            self._rebuild = True
            note = f"; trying MQTT {self.current}"
        rebuild, self._rebuild = self._rebuild, False
        # The broker said which protocol it wants: no reason to wait before trying it.
        at_once = rebuild and not was_connected and self.current == "3.1.1" and not note
        return rebuild, at_once, note
