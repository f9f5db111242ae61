"""A stand-in engine for transport tests (TLS, tokens): enough for the server to report SERVING and
answer ListCapabilities, with no models. A stream that gets as far as planning needs the real engine."""

from __future__ import annotations


class StubEngine:
    load_s = 0.0

    def warm_up(self) -> None:
        pass

    def capabilities(self):
        from relais.pipeline.engine import EngineCapabilities

        return EngineCapabilities(["fr"], ["en"], [], [], "cpu")

    def new_scheduler(self, observer=None, wait_observer=None):
        return object()
