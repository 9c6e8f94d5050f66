"""Host integration: systemd notify and watchdog, the audit log, system readings, CPU wake-up latency, the state
folder's lock."""
