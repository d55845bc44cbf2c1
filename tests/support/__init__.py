"""What the unit, e2e and integration tests share: polling, a fake clock, servers.

* ``polling``: wait for a condition with a timeout (never a bare sleep).
* ``clock``: ``FakeClock``, a settable clock whose timers fire on ``advance``.
* ``servers``: ``running_server`` (a real ``chime serve``) and ``running_hosts``.
"""
