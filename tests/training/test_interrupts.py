"""Stop requests: signals, deadlines and polls end a run at the end of an epoch."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from nlb_ndt.training.interrupts import StopRequest, stop_on_signals


def test_stop_request_from_a_deadline_and_a_poll():
    """Verify that a passed deadline stops a run only at a validation, that a poll
    returning True stops it at any epoch, and that the first reason is kept."""
    assert not StopRequest().requested
    late = StopRequest(deadline=time.time() - 1)
    assert not late.due(validated=False) and not late.requested
    assert late.due(validated=True) and "time budget" in late.reason
    polled = StopRequest(poll=lambda: True)
    assert polled.due(validated=False) and polled.reason == "stop requested"
    polled.request("later reason")
    assert polled.reason == "stop requested"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_requests_a_stop_and_the_second_stops_at_once(signum):
    """Verify that the first SIGINT / SIGTERM only sets the request, that a second one
    raises at once, and that the previous handlers are back afterwards."""
    before = signal.getsignal(signum)
    request = StopRequest()
    expected = KeyboardInterrupt if signum == signal.SIGINT else SystemExit
    with pytest.raises(expected):
        with stop_on_signals(request):
            os.kill(os.getpid(), signum)
            time.sleep(0.1)  # the handler runs between bytecodes of the main thread
            assert request.requested and signal.Signals(signum).name in request.reason
            os.kill(os.getpid(), signum)
            time.sleep(1.0)
    assert signal.getsignal(signum) is before


def test_signals_are_left_alone_outside_the_main_thread():
    """Verify that in another thread (as in a Ray trial) no handler is installed and the
    request still works by polling."""
    seen = {}

    def body():
        request = StopRequest(poll=lambda: True)
        with stop_on_signals(request) as inside:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["requested"] = inside.requested

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen["handler"] is signal.getsignal(signal.SIGTERM) and seen["requested"]
