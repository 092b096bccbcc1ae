"""Stop requests: SIGINT and SIGTERM set a flag inside the block, a second one aborts, handlers come back."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from nettrain.training.signals import StopRequest


def test_a_signal_sets_the_flag_and_the_handlers_come_back():
    before = {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS}
    stop = StopRequest()
    with stop.handling_signals():
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second signal aborts at once
            os.kill(os.getpid(), signal.SIGINT)
    assert {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS} == before


def test_handlers_come_back_after_an_error():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError):
        with StopRequest().handling_signals():
            raise RuntimeError("the loop failed")
    assert signal.getsignal(signal.SIGINT) is before


def test_the_first_request_is_kept():
    stop = StopRequest()
    stop.request(signal.SIGTERM)
    stop.request(signal.SIGINT)
    assert stop.signum == signal.SIGTERM


def test_handlers_stay_alone_when_disabled_or_off_the_main_thread():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest().handling_signals(enabled=False):
        assert signal.getsignal(signal.SIGINT) is before
    seen = []

    def in_thread():
        with StopRequest().handling_signals():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [before]
