"""NumPy bptt candidates that do not return: they end the process, raise what is not an
Exception, or never finish. `rnnkern check` must report each as a failed row, not a pass."""

import signal
import sys
import time

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from bptt import bptt  # noqa: E402


def calls_sys_exit(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    sys.exit(0)


def raises_system_exit_at_step_count_3(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """Right on most sizes; SystemExit(0) when T == 3."""
    if x.shape[0] == 3:
        raise SystemExit(0)
    return bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y)


def raises_keyboard_interrupt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    raise KeyboardInterrupt("from the candidate")


class _Base(BaseException):
    pass


def raises_a_base_exception(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    raise _Base("not an Exception")


def hangs(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    while True:
        time.sleep(0.01)


def hangs_and_swallows(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """Catches everything, the time limit included, and keeps going a while."""
    end = time.monotonic() + 4
    while time.monotonic() < end:
        try:
            time.sleep(0.01)
        except BaseException:
            pass
    return bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y)


def sends_itself_sigint(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """As a user's Ctrl-C: SIGINT to the process while the check runs."""
    signal.raise_signal(signal.SIGINT)
    time.sleep(5)
    return bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y)
