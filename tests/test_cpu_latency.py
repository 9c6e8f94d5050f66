"""The PM QoS request on the real /dev/cpu_dma_latency of this machine (Linux; CI runs as root)."""

from __future__ import annotations

import os

import pytest

from appliance.host.cpu_latency import DEVICE, CpuLatencyRequest, current_target_us


@pytest.mark.skipif(not DEVICE.exists(), reason=f"{DEVICE} does not exist on this kernel")
def test_the_kernel_holds_the_request_while_it_is_open_and_drops_it_on_release():
    request = CpuLatencyRequest(0)
    if not os.access(DEVICE, os.W_OK):
        assert not request.acquire() and "no write access" in request.problem
        return
    before = current_target_us()
    assert request.acquire() and request.held
    assert current_target_us() == 0                   # the kernel's aggregate target is now ours
    request.release()
    assert not request.held and current_target_us() == before
    assert request.describe() == {"requested_us": 0, "applied": True, "problem": None}   # what the run had


def test_a_missing_or_wrong_device_is_reported_and_the_loop_goes_on(tmp_path, caplog):
    missing = CpuLatencyRequest(0, device=tmp_path / "nope")
    assert not missing.acquire() and "does not exist" in missing.problem
    wrong = CpuLatencyRequest(0, device=tmp_path)      # a directory: open fails with another error
    assert not wrong.acquire() and "cannot be opened" in wrong.problem
    assert "not applied" in caplog.text and "kernel's idle states" in caplog.text
    missing.release()     # harmless when nothing is held
