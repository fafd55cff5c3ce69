//! What the standard `OTEL_*` variables ask for, read and checked up front: a value
//! that cannot be used falls back to its default with a warning naming the variable
//! (the SDK would fall back silently). The exporter crate reads the endpoint, headers, timeout and compression
//! variables itself; this module decides whether to export at all, over which
//! protocol, with which sampler, and how the export queue is sized.

use std::time::Duration;

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf` (the default).
    HttpProtobuf,
    /// `grpc`.
    Grpc,
}

/// The sampler, as `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerChoice {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio` with its ratio.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default).
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with its ratio.
    ParentBasedTraceIdRatio(f64),
}

/// The export queue (`OTEL_BSP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Spans waiting at most; more are dropped and counted.
    pub max_queue: usize,
    /// Spans per export request at most.
    pub max_batch: usize,
    /// How long a span may wait for its batch to fill.
    pub delay: Duration,
    /// How long one export may take before it counts as failed.
    pub export_timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_queue: 2048,
            max_batch: 512,
            delay: Duration::from_secs(5),
            export_timeout: Duration::from_secs(30),
        }
    }
}

/// Where and how spans go.
#[derive(Clone, Debug, PartialEq)]
pub struct OtelConfig {
    /// Whether to export at all: an endpoint is configured and the SDK is not disabled.
    pub export: bool,
    /// The transport.
    pub protocol: Protocol,
    /// The endpoint is `https://`: gRPC then needs TLS set up with root certificates.
    pub https: bool,
    /// The sampler.
    pub sampler: SamplerChoice,
    /// `OTEL_SERVICE_NAME`, or `service.name` from `OTEL_RESOURCE_ATTRIBUTES`, is set;
    /// otherwise the service is called `turngate`.
    pub service_name_set: bool,
    /// The export queue.
    pub queue: QueueConfig,
    /// Values that could not be used, and what was used instead.
    pub warnings: Vec<String>,
}

impl OtelConfig {
    /// Reads the variables through `var` (the process environment in production). As
    /// the specification asks, a value that cannot be used is replaced by the default
    /// with a warning (in `warnings`, to be logged once logging is up).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut warnings = Vec::new();
        let mut invalid = |name: &str, value: &str, expected: &str, default: &str| {
            warnings.push(format!(
                "{name}={value:?} is not valid (expected {expected}); using {default}"
            ));
        };
        // Only `true` disables (any other value is false, as the specification says).
        let disabled = match get("OTEL_SDK_DISABLED").map(|v| v.to_ascii_lowercase()) {
            Some(v) if v == "true" => true,
            Some(v) if v != "false" => {
                invalid("OTEL_SDK_DISABLED", &v, "true or false", "false");
                false
            }
            _ => false,
        };
        let endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let https = endpoint
            .as_deref()
            .is_some_and(|e| e.to_ascii_lowercase().starts_with("https://"));
        let exporter_otlp = match get("OTEL_TRACES_EXPORTER") {
            None => true,
            Some(list) => {
                let names: Vec<&str> = list.split(',').map(str::trim).collect();
                for other in names.iter().filter(|n| !["otlp", "none"].contains(n)) {
                    invalid(
                        "OTEL_TRACES_EXPORTER",
                        other,
                        "otlp or none",
                        "nothing for it",
                    );
                }
                names.contains(&"otlp")
            }
        };
        let protocol_var = if get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").is_some() {
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        } else {
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        };
        let protocol = match get(protocol_var).as_deref() {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(v) => {
                invalid(protocol_var, v, "http/protobuf or grpc", "http/protobuf");
                Protocol::HttpProtobuf
            }
        };
        let ratio = match get("OTEL_TRACES_SAMPLER_ARG") {
            None => 1.0,
            Some(v) => match v.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)) {
                Some(r) => r,
                None => {
                    invalid("OTEL_TRACES_SAMPLER_ARG", &v, "a number from 0 to 1", "1.0");
                    1.0
                }
            },
        };
        let sampler = match get("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_always_on") => SamplerChoice::ParentBasedAlwaysOn,
            Some("always_on") => SamplerChoice::AlwaysOn,
            Some("always_off") => SamplerChoice::AlwaysOff,
            Some("traceidratio") => SamplerChoice::TraceIdRatio(ratio),
            Some("parentbased_always_off") => SamplerChoice::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => SamplerChoice::ParentBasedTraceIdRatio(ratio),
            Some(v) => {
                invalid(
                    "OTEL_TRACES_SAMPLER",
                    v,
                    "always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio",
                    "parentbased_always_on",
                );
                SamplerChoice::ParentBasedAlwaysOn
            }
        };
        let service_name_set = get("OTEL_SERVICE_NAME").is_some()
            || get("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
                attrs
                    .split(',')
                    .any(|kv| kv.split('=').next().map(str::trim) == Some("service.name"))
            });
        let defaults = QueueConfig::default();
        let mut number = |name: &str, default: u64| -> u64 {
            match get(name) {
                None => default,
                Some(v) => v.parse::<u64>().ok().filter(|n| *n > 0).unwrap_or_else(|| {
                    invalid(name, &v, "a positive integer", &default.to_string());
                    default
                }),
            }
        };
        let max_queue = number("OTEL_BSP_MAX_QUEUE_SIZE", defaults.max_queue as u64) as usize;
        let max_batch =
            number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", defaults.max_batch as u64) as usize;
        let delay = number("OTEL_BSP_SCHEDULE_DELAY", defaults.delay.as_millis() as u64);
        let export_timeout = number(
            "OTEL_BSP_EXPORT_TIMEOUT",
            defaults.export_timeout.as_millis() as u64,
        );
        Self {
            export: endpoint.is_some() && !disabled && exporter_otlp,
            protocol,
            https,
            sampler,
            service_name_set,
            queue: QueueConfig {
                max_queue,
                max_batch: max_batch.min(max_queue),
                delay: Duration::from_millis(delay),
                export_timeout: Duration::from_millis(export_timeout),
            },
            warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> OtelConfig {
        OtelConfig::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    const ENDPOINT: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");

    #[test]
    fn no_endpoint_means_no_export() {
        let c = config(&[("OTEL_TRACES_SAMPLER", "always_on")]);
        assert!(!c.export);
        assert_eq!(c.sampler, SamplerChoice::AlwaysOn);
        assert!(config(&[ENDPOINT]).export);
        let traces = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://collector:4318/v1/traces",
        );
        let c = config(&[traces]);
        assert!(c.export && c.https);
    }

    #[test]
    fn disabled_sdk_or_no_otlp_exporter_means_no_export() {
        assert!(!config(&[ENDPOINT, ("OTEL_SDK_DISABLED", "TRUE")]).export);
        assert!(!config(&[ENDPOINT, ("OTEL_TRACES_EXPORTER", "none")]).export);
        assert!(config(&[ENDPOINT, ("OTEL_TRACES_EXPORTER", "otlp,console")]).export);
        assert!(config(&[ENDPOINT, ("OTEL_SDK_DISABLED", "false")]).export);
        // Anything but `true` is false.
        let c = config(&[ENDPOINT, ("OTEL_SDK_DISABLED", "1")]);
        assert!(c.export);
        assert!(
            c.warnings[0].contains("OTEL_SDK_DISABLED"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn protocol_and_sampler() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]);
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.sampler, SamplerChoice::TraceIdRatio(0.25));
        assert!(c.warnings.is_empty());
        assert_eq!(config(&[]).sampler, SamplerChoice::ParentBasedAlwaysOn);
    }

    #[test]
    fn unusable_values_fall_back_with_a_warning_naming_the_variable() {
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_TRACES_EXPORTER", "jaeger"),
        ] {
            let c = config(&[(var, value)]);
            assert_eq!(c.warnings.len(), 1, "{var}: {:?}", c.warnings);
            assert!(c.warnings[0].contains(var), "{:?}", c.warnings);
            assert_eq!(c.protocol, Protocol::HttpProtobuf);
            assert_eq!(c.sampler, SamplerChoice::ParentBasedAlwaysOn);
            assert_eq!(c.queue, QueueConfig::default());
        }
        let c = config(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]);
        assert_eq!(c.sampler, SamplerChoice::TraceIdRatio(1.0));
        assert!(
            c.warnings[0].contains("OTEL_TRACES_SAMPLER_ARG"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn service_name_from_either_variable() {
        assert!(!config(&[]).service_name_set);
        assert!(config(&[("OTEL_SERVICE_NAME", "gw")]).service_name_set);
        assert!(config(&[("OTEL_RESOURCE_ATTRIBUTES", "a=b, service.name=gw")]).service_name_set);
    }
}
