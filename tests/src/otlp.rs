//! In-process OTLP trace receivers — HTTP/protobuf (`POST /v1/traces`) and gRPC
//! (`TraceService/Export`) — that keep every span they are sent, flattened into
//! [`Span`]s with hex ids and JSON attribute values for easy assertions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::Value;

/// One received span.
#[derive(Clone, Debug)]
pub struct Span {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id, or empty for a root.
    pub parent_id: String,
    /// The span name.
    pub name: String,
    /// The OTLP span kind (2 = server, 3 = client).
    pub kind: i32,
    /// Start, in Unix nanoseconds.
    pub start_ns: u64,
    /// End, in Unix nanoseconds.
    pub end_ns: u64,
    /// Attributes.
    pub attrs: BTreeMap<String, Value>,
    /// Events: (name, Unix nanoseconds).
    pub events: Vec<(String, u64)>,
    /// Links: (trace id, span id).
    pub links: Vec<(String, String)>,
    /// The OTLP status code (2 = error).
    pub status: i32,
    /// The status message.
    pub status_message: String,
    /// The resource's attributes.
    pub resource: BTreeMap<String, Value>,
}

impl Span {
    /// An attribute's value, or `Null`.
    pub fn attr(&self, key: &str) -> &Value {
        self.attrs.get(key).unwrap_or(&Value::Null)
    }
}

type Store = Arc<Mutex<Vec<Span>>>;

/// A running receiver.
pub struct Collector {
    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` should be.
    pub endpoint: String,
    /// `http/protobuf` or `grpc`.
    pub protocol: &'static str,
    spans: Store,
}

impl Collector {
    /// An OTLP/HTTP (protobuf) receiver on loopback.
    pub async fn http() -> anyhow::Result<Self> {
        Self::http_answering_after(Duration::ZERO).await
    }

    /// An OTLP/HTTP receiver that takes `delay` to answer each request: a slow collector.
    pub async fn http_answering_after(delay: Duration) -> anyhow::Result<Self> {
        let spans = Store::default();
        let store = Arc::clone(&spans);
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| async move {
                tokio::time::sleep(delay).await;
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        keep(&store, request);
                        let answer = ExportTraceServiceResponse::default().encode_to_vec();
                        ([("content-type", "application/x-protobuf")], answer).into_response()
                    }
                    Err(e) => (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            endpoint,
            protocol: "http/protobuf",
            spans,
        })
    }

    /// An OTLP/gRPC receiver on loopback (accepting gzip).
    pub async fn grpc() -> anyhow::Result<Self> {
        let spans = Store::default();
        let service = TraceServiceServer::new(Receiver(Arc::clone(&spans)))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
        });
        Ok(Self {
            endpoint,
            protocol: "grpc",
            spans,
        })
    }

    /// The environment that points a gateway here, exporting promptly.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", self.protocol.to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ]
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Waits until `done` holds for the spans received, or fails after `timeout`.
    pub async fn wait(
        &self,
        timeout: Duration,
        done: impl Fn(&[Span]) -> bool,
    ) -> anyhow::Result<Vec<Span>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if tokio::time::Instant::now() > deadline {
                let names: Vec<_> = spans.iter().map(|s| (&s.name, &s.trace_id)).collect();
                anyhow::bail!("spans never arrived; have {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Receiver(Store);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn keep(store: &Store, request: ExportTraceServiceRequest) {
    let mut spans = store.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = attributes(
            resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default(),
        );
        for scope in resource_spans.scope_spans {
            for s in scope.spans {
                spans.push(Span {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_id: hex(&s.parent_span_id),
                    name: s.name,
                    kind: s.kind,
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                    attrs: attributes(s.attributes),
                    events: s
                        .events
                        .into_iter()
                        .map(|e| (e.name, e.time_unix_nano))
                        .collect(),
                    links: s
                        .links
                        .into_iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    status: s.status.as_ref().map_or(0, |st| st.code),
                    status_message: s.status.map(|st| st.message).unwrap_or_default(),
                    resource: resource.clone(),
                });
            }
        }
    }
}

fn attributes(kvs: Vec<KeyValue>) -> BTreeMap<String, Value> {
    kvs.into_iter()
        .map(|kv| (kv.key, kv.value.map_or(Value::Null, json)))
        .collect()
}

fn json(v: AnyValue) -> Value {
    match v.value {
        Some(any_value::Value::StringValue(s)) => Value::String(s),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(b),
        Some(any_value::Value::IntValue(i)) => Value::from(i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.into_iter().map(json).collect())
        }
        Some(any_value::Value::KvlistValue(l)) => Value::Object(
            l.values
                .into_iter()
                .map(|kv| (kv.key, kv.value.map_or(Value::Null, json)))
                .collect(),
        ),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex(&b)),
        _ => Value::Null,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
