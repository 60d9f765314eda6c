//! Trace context across sites: a write that carries a W3C `traceparent` header is followed from
//! the client through the origin's commit to every peer's apply.
//!
//! The origin starts a commit span, a child of the client's span, and writes its context into
//! each event's metadata (`traceparent`), so the event carries it to every site; each peer then
//! records an apply span, a child of the origin's commit span, from the moment its batch went to
//! the committer to its durable apply. Spans are exported over OTLP/HTTP (JSON) when
//! `[tracing] otlp_endpoint` is set; without it, the client's `traceparent` is kept in the
//! metadata as it came, so the nodes that do export keep the trace whole.
//!
//! Invariant: tracing never decides state. The metadata is part of the event (fixed at the
//! origin like the rest of it); span ids are random, but only the origin picks one, before the
//! event's bytes exist.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};

/// The OTLP exporter, with its failures written to the node's log (the SDK's own reports are
/// compiled out of this build): a collector that cannot be reached, or refuses the spans, is
/// said once per 10 s with how many failures were left out, instead of spans vanishing quietly.
#[derive(Debug)]
struct Reported<E> {
    inner: E,
    endpoint: String,
}

impl<E: SpanExporter> SpanExporter for Reported<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        static LOG: crate::log_limit::Throttle =
            crate::log_limit::Throttle::new(crate::log_limit::EVERY);
        let spans = batch.len();
        let exported = self.inner.export(batch);
        async move {
            let result = exported.await;
            if let Err(e) = &result
                && let Some(left_out) = LOG.allow()
            {
                tracing::warn!(endpoint = %self.endpoint, spans, left_out, "exporting trace spans failed (they are dropped; lines like this one are written once per 10 s): {e}");
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The metadata key (and request header) carrying a W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// This node's tracer: spans go to the configured OTLP endpoint, or nowhere.
pub struct Traces {
    exporter: Option<(SdkTracerProvider, SdkTracer)>,
    node: String,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces")
            .field("exporting", &self.exporter.is_some())
            .field("node", &self.node)
            .finish()
    }
}

/// A client's trace context, checked.
#[derive(Debug, Clone)]
pub struct ClientTrace {
    cx: Context,
    header: String,
}

/// The commit span of a traced write, open until [`CommitSpan::end`].
pub struct CommitSpan {
    span: Option<opentelemetry_sdk::trace::Span>,
    /// The `traceparent` the events carry.
    pub traceparent: String,
    /// The trace id, for log lines.
    pub trace_id: String,
}

/// Why tracing could not start, or a client's trace header was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The OTLP exporter could not be built for the configured endpoint.
    #[error("tracing.otlp_endpoint {endpoint:?}: {reason}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// What the exporter said.
        reason: String,
    },
    /// A `traceparent` header that is not a W3C trace context.
    #[error(
        "traceparent {0:?} is not a W3C trace context (00-<32 hex trace id>-<16 hex span id>-<2 hex flags>, ids not all zero)"
    )]
    BadHeader(String),
}

impl Traces {
    /// Exports spans to `config.tracing.otlp_endpoint` if set (batched, every 500 ms).
    pub fn new(config: &edgerep_config::Config) -> Result<Traces, TraceError> {
        let node = config.node.id.to_string();
        let Some(endpoint) = &config.tracing.otlp_endpoint else {
            return Ok(Traces {
                exporter: None,
                node,
            });
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| TraceError::Exporter {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?;
        let processor = BatchSpanProcessor::builder(Reported {
            inner: exporter,
            endpoint: endpoint.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(500))
                .build(),
        )
        .build();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name("edgerep")
            .with_attribute(KeyValue::new("edgerep.node", node.clone()))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("edgerep");
        Ok(Traces {
            exporter: Some((provider, tracer)),
            node,
        })
    }

    /// Exports what is pending and stops (at node shutdown).
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.exporter
            && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!("exporting the last trace spans failed: {e}");
        }
    }

    /// The client's `traceparent` header checked: Err names what is wrong.
    pub fn parse_header(value: &str) -> Result<ClientTrace, TraceError> {
        // W3C Trace Context, version 00, exactly: the header travels with the event to every
        // peer and watcher as the client sent it, so it must be the form they expect (the
        // propagator alone takes short or signed hex, and extra fields).
        let Some(header) = well_formed_traceparent(value) else {
            return Err(TraceError::BadHeader(value.to_owned()));
        };
        let cx = extract(&header);
        if !cx.span().span_context().is_valid() {
            return Err(TraceError::BadHeader(value.to_owned()));
        }
        Ok(ClientTrace { cx, header })
    }

    /// Starts the origin's commit span of `events` writes, a child of the client's span.
    pub fn commit_span(&self, client: &ClientTrace, events: usize) -> CommitSpan {
        let trace_id = client.cx.span().span_context().trace_id().to_string();
        let Some((_, tracer)) = &self.exporter else {
            return CommitSpan {
                span: None,
                traceparent: client.header.clone(),
                trace_id,
            };
        };
        let span = tracer
            .span_builder("edgerep.commit")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("edgerep.node", self.node.clone()),
                KeyValue::new("edgerep.events", events as i64),
            ])
            .start_with_context(tracer, &client.cx);
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        CommitSpan {
            traceparent: inject(&cx),
            span: Some(span),
            trace_id,
        }
    }

    /// Records the apply span of one event, from `started` to now, a child of the span its
    /// `traceparent` names, with a child span per plugin call on it (`edgerep.plugin`). A
    /// traceparent that does not parse (an origin's bug or a client's oddity) records nothing.
    pub fn apply_span(&self, traceparent: &str, started: SystemTime, applied: Applied<'_>) {
        let Applied {
            peer,
            origin,
            seq,
            collection,
            plugins,
        } = applied;
        let Some((_, tracer)) = &self.exporter else {
            return;
        };
        let parent = extract(traceparent);
        if !parent.span().span_context().is_valid() {
            return;
        }
        let mut span = tracer
            .span_builder("edgerep.apply")
            .with_kind(SpanKind::Consumer)
            .with_start_time(started)
            .with_attributes([
                KeyValue::new("edgerep.node", self.node.clone()),
                KeyValue::new("edgerep.peer", peer.to_owned()),
                KeyValue::new("edgerep.origin", origin.to_owned()),
                KeyValue::new("edgerep.seq", seq as i64),
                KeyValue::new("edgerep.collection", collection.to_owned()),
            ])
            .start_with_context(tracer, &parent);
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        for call in plugins {
            let mut attributes = vec![
                KeyValue::new("edgerep.node", self.node.clone()),
                KeyValue::new("edgerep.plugin", call.plugin.clone()),
            ];
            if let Some(kind) = &call.failure {
                attributes.push(KeyValue::new("edgerep.failure", kind.clone()));
            }
            let mut child = tracer
                .span_builder("edgerep.plugin")
                .with_kind(SpanKind::Internal)
                .with_start_time(call.start)
                .with_attributes(attributes)
                .start_with_context(tracer, &cx);
            if let Some(kind) = &call.failure {
                child.set_status(opentelemetry::trace::Status::error(kind.clone()));
            }
            child.end_with_timestamp(call.end);
        }
        span.end();
    }
}

/// One applied event, for [`Traces::apply_span`].
pub struct Applied<'a> {
    /// The peer it came from.
    pub peer: &'a str,
    /// Its origin.
    pub origin: &'a str,
    /// Its sequence number.
    pub seq: u64,
    /// Its collection.
    pub collection: &'a str,
    /// The transforms on apply that ran on it.
    pub plugins: &'a [crate::pipeline::PluginCall],
}

impl CommitSpan {
    /// Ends the span, with the committed sequence numbers (or the failure).
    pub fn end(self, outcome: Result<(u64, u64), &str>) {
        let Some(mut span) = self.span else { return };
        match outcome {
            Ok((first, last)) => span.set_attributes([
                KeyValue::new("edgerep.first_seq", first as i64),
                KeyValue::new("edgerep.last_seq", last as i64),
            ]),
            Err(e) => span.set_status(opentelemetry::trace::Status::error(e.to_owned())),
        }
        span.end();
    }
}

fn extract(traceparent: &str) -> Context {
    let carrier: HashMap<String, String> =
        HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

fn inject(cx: &Context) -> String {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// A traceparent as W3C Trace Context reads it, written as version 00: a version in lowercase
/// hex (not `ff`), then 32, 16 and 2 lowercase hex digits; version 00 has exactly these four
/// fields, a later version may have more after them (not kept).
fn well_formed_traceparent(value: &str) -> Option<String> {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let parts: Vec<&str> = value.split('-').collect();
    let (version, trace, span, flags) = match parts.as_slice() {
        [version, trace, span, flags] => (*version, *trace, *span, *flags),
        [version, trace, span, flags, ..] if *version != "00" => (*version, *trace, *span, *flags),
        _ => return None,
    };
    (hex(version, 2) && version != "ff" && hex(trace, 32) && hex(span, 16) && hex(flags, 2))
        .then(|| format!("00-{trace}-{span}-{flags}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_checked_and_passed_on_without_an_exporter() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = Traces::parse_header(good).unwrap();
        let traces = Traces {
            exporter: None,
            node: "n".into(),
        };
        let span = traces.commit_span(&t, 1);
        assert_eq!(span.traceparent, good);
        // A later version is read by its first four fields, and kept as version 00.
        let later = Traces::parse_header(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more fields",
        )
        .unwrap();
        assert_eq!(traces.commit_span(&later, 1).traceparent, good);
        assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01x",
            // What the propagator alone took: short, signed or upper-case hex, version ff, extra
            // fields in version 00.
            "00-1-1-1",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let e = Traces::parse_header(bad).unwrap_err();
            assert!(
                matches!(&e, TraceError::BadHeader(h) if h == bad),
                "{bad}: {e}"
            );
            assert!(
                e.to_string().contains("not a W3C trace context"),
                "{bad}: {e}"
            );
        }
    }
}
