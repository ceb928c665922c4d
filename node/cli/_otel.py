"""OpenTelemetry spans, optional (``pip install moonwire[otel]``; docs/operations.md).

With ``OTEL_TRACES_EXPORTER`` set to ``console`` or ``otlp`` (OpenTelemetry's own
variable; ``otlp`` also needs ``opentelemetry-exporter-otlp-proto-http``, configured by
the usual ``OTEL_EXPORTER_OTLP_*`` variables), ``moonwire run`` records a span per
function call: named by the entry, child of the ``traceparent`` the call came with, and
the parent of everything the call does (its callees get the span's ``traceparent``).
Unset, or ``none``, nothing is imported and a call costs one check. Nothing here is
needed for trace ids in logs: those come from the trace context alone.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from moonwire.lua import MoonwireError, set_span_hook

log = logging.getLogger("moonwire.otel")

EXPORTERS = ("console", "otlp")


class OtelSpans:
    """The span hook (:class:`moonwire.lua.SpanHook`) over an OpenTelemetry tracer."""

    def __init__(self, tracer: Any, node: str) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer = tracer
        self.node = node
        self.propagator = TraceContextTextMapPropagator()

    def begin(self, name: str, traceparent: str | None) -> tuple[Any, str]:
        from opentelemetry import trace

        parent = self.propagator.extract({"traceparent": traceparent}) if traceparent else None
        span = self.tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER,
                                      attributes={"moonwire.node": self.node, "moonwire.entry": name})
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=trace.set_span_in_context(span))
        return span, carrier["traceparent"]

    def end(self, span: Any, error: Any) -> None:
        from opentelemetry.trace import Status, StatusCode

        if isinstance(error, MoonwireError):
            span.set_status(Status(StatusCode.ERROR, error.message))
            span.set_attribute("moonwire.error.kind", error.kind or "")
        span.end()


def install_spans(node: str, environ: os._Environ[str] | dict[str, str] = os.environ) -> Any:
    """Install the span hook when ``OTEL_TRACES_EXPORTER`` asks for one; the tracer
    provider (None: no spans). A missing package is one warning, never a failure."""
    exporter_name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not exporter_name or exporter_name == "none":
        return None
    if exporter_name not in EXPORTERS:
        log.warning("OTEL_TRACES_EXPORTER=%s: moonwire exports spans to %s only; no spans", exporter_name,
                    " or ".join(EXPORTERS))
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        if exporter_name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            exporter: Any = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter(out=sys.stderr)  # stdout is `run -x`'s answer
    except ImportError as err:
        log.warning("OTEL_TRACES_EXPORTER=%s but %s is not installed (pip install 'moonwire[otel]'%s); no spans",
                    exporter_name, err.name, " opentelemetry-exporter-otlp-proto-http" if exporter_name == "otlp"
                    else "")
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "moonwire"),
                                                        "service.instance.id": node}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    set_span_hook(OtelSpans(provider.get_tracer("moonwire"), node))
    log.info("a span per function call, exported to %s", exporter_name)
    return provider
