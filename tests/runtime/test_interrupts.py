"""deferred_interrupt: a SIGINT inside the block is acted on once, when the block ends."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch

from fpncli.runtime.interrupts import deferred_interrupt


def _interrupt_self() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_a_sigint_inside_the_block_raises_after_the_block_finishes():
    done = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupt():
        _interrupt_self()
        done.append("rest of the block")
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_signal_no_effect_and_the_handler_is_put_back():
    calls = []
    previous = signal.signal(signal.SIGINT, lambda s, f: calls.append(s))
    try:
        with deferred_interrupt():
            pass
        assert calls == []
        _interrupt_self()  # the caller's own handler is back and runs
        assert calls == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ignored_sigint_stays_ignored_and_a_custom_handler_runs_once():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_interrupt():
            _interrupt_self()
            _interrupt_self()
        calls = []
        signal.signal(signal.SIGINT, lambda s, f: calls.append(s))
        with deferred_interrupt():
            _interrupt_self()
            _interrupt_self()
        assert calls == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_the_block_just_runs():
    seen = []

    def body():
        with deferred_interrupt():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


class _Handlers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return int(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN)


def test_loader_workers_ignore_sigterm_and_the_main_process_does_not():
    """A SIGTERM to the whole process group killed the loader workers, and torch raised
    "worker killed by signal" inside the loader's shutdown; the main process stops them."""
    from fpncli.runtime.interrupts import workers_ignore_sigterm

    loader = torch.utils.data.DataLoader(
        _Handlers(), batch_size=None, num_workers=1, worker_init_fn=workers_ignore_sigterm
    )
    assert list(loader) == [1, 1]
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN
    plain = torch.utils.data.DataLoader(_Handlers(), batch_size=None, num_workers=1)
    assert list(plain) == [0, 0]
