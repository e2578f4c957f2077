"""Login attempts are slowed down: a burst of wrong passwords cannot be followed by a lucky one."""

from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
httpx = pytest.importorskip("httpx")
pytest.importorskip("gradio")

from apptools import RunningApp  # noqa: E402
from factory import demo_like_family  # noqa: E402

from fusion_ui.ui.login import LoginThrottle  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_check_is_a_plain_function_gradio_calls_and_reads_as_a_bool() -> None:
    """Gradio awaits an auth callable only if inspect says it is a coroutine function; an object
    with an async __call__ would hand it a coroutine, which is truthy: everyone let in."""
    import inspect

    t = LoginThrottle("me", "secret")
    assert not inspect.iscoroutinefunction(t) and t("me", "wrong") is False and t("me", "secret") is True


def test_throttle_refuses_during_cool_downs_that_double() -> None:
    clock = FakeClock()
    t = LoginThrottle("me", "secret", free_failures=3, first_wait=1.0, max_wait=8.0, clock=clock)
    assert [t.check("me", "wrong") for _ in range(3)] == [False] * 3
    assert t.wait_left() == 1.0
    assert t.check("me", "secret") is False and t.refused == 1  # the right one, but too soon
    clock.now += 1.0
    assert t.check("me", "wrong") is False and t.wait_left() == 2.0  # doubled
    clock.now += 2.0
    assert t.check("me", "wrong") is False and t.wait_left() == 4.0
    clock.now += 4.0
    assert t.check("me", "wrong") is False and t.wait_left() == 8.0
    clock.now += 8.0
    assert t.check("me", "wrong") is False and t.wait_left() == 8.0  # capped
    clock.now += 8.0
    assert t.check("other", "secret") is False  # the user name counts too
    clock.now += 8.0
    assert t.check("me", "secret") is True and t.failures == 0 and t.wait_left() == 0.0


def test_a_burst_of_wrong_passwords_then_the_right_one_is_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    family = demo_like_family(tmp_path_factory.mktemp("demo"))
    throttle = LoginThrottle("me", "secret", free_failures=5, first_wait=2.0, max_wait=60.0)
    app = RunningApp(family, tmp_path_factory.mktemp("state"), auth="me:secret", login=throttle)
    try:
        with httpx.Client(base_url=app.url, timeout=10) as http:
            codes = [http.post("login", data={"username": "me", "password": f"guess{k}"}).status_code
                     for k in range(300)]
            assert all(c >= 400 for c in codes)
            assert throttle.failures == 5 and throttle.refused == 295  # 295 guesses never looked at
            right = http.post("login", data={"username": "me", "password": "secret"})
            assert right.status_code >= 400  # within the cool-down: refused
            time.sleep(max(0.0, throttle.wait_left()) + 0.05)
            right = http.post("login", data={"username": "me", "password": "secret"})
            assert right.status_code < 400, right.text
    finally:
        app.close()
