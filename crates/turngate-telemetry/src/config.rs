//! What the standard `OTEL_*` variables ask for, read and checked up front so that a
//! bad value stops the gateway with a message naming the variable, instead of a silent
//! fallback. The exporter crate reads the endpoint, headers, timeout and compression
//! variables itself; this module decides whether to export at all, over which
//! protocol, with which sampler, and how the export queue is sized.

use std::time::Duration;

use crate::error::Error;

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
    /// The sampler.
    pub sampler: SamplerChoice,
    /// `OTEL_SERVICE_NAME`, or `service.name` from `OTEL_RESOURCE_ATTRIBUTES`, is set;
    /// otherwise the service is called `turngate`.
    pub service_name_set: bool,
    /// The export queue.
    pub queue: QueueConfig,
}

impl OtelConfig {
    /// Reads the variables through `var` (the process environment in production).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let disabled = match get("OTEL_SDK_DISABLED").map(|v| v.to_ascii_lowercase()) {
            None => false,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => return Err(invalid("OTEL_SDK_DISABLED", &v, "true or false")),
        };
        let endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_some();
        let exporter_none = get("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none");
        if let Some(v) = get("OTEL_TRACES_EXPORTER").filter(|v| v != "none" && v != "otlp") {
            return Err(invalid("OTEL_TRACES_EXPORTER", &v, "otlp or none"));
        }
        let protocol_var = if get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").is_some() {
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        } else {
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        };
        let protocol = match get(protocol_var).as_deref() {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(v) => return Err(invalid(protocol_var, v, "http/protobuf or grpc")),
        };
        let sampler = sampler(get("OTEL_TRACES_SAMPLER"), get("OTEL_TRACES_SAMPLER_ARG"))?;
        let service_name_set = get("OTEL_SERVICE_NAME").is_some()
            || get("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
                attrs
                    .split(',')
                    .any(|kv| kv.split('=').next().map(str::trim) == Some("service.name"))
            });
        let defaults = QueueConfig::default();
        let number = |name: &str, default: u64| -> Result<u64, Error> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(name, &v, "a positive integer")),
            }
        };
        let max_queue = number("OTEL_BSP_MAX_QUEUE_SIZE", defaults.max_queue as u64)? as usize;
        let queue = QueueConfig {
            max_queue,
            max_batch: (number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", defaults.max_batch as u64)?
                as usize)
                .min(max_queue),
            delay: Duration::from_millis(number(
                "OTEL_BSP_SCHEDULE_DELAY",
                defaults.delay.as_millis() as u64,
            )?),
            export_timeout: Duration::from_millis(number(
                "OTEL_BSP_EXPORT_TIMEOUT",
                defaults.export_timeout.as_millis() as u64,
            )?),
        };
        Ok(Self {
            export: endpoint && !disabled && !exporter_none,
            protocol,
            sampler,
            service_name_set,
            queue,
        })
    }
}

fn sampler(name: Option<String>, arg: Option<String>) -> Result<SamplerChoice, Error> {
    let ratio = || -> Result<f64, Error> {
        match &arg {
            None => Ok(1.0),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| invalid("OTEL_TRACES_SAMPLER_ARG", v, "a number from 0 to 1")),
        }
    };
    Ok(match name.as_deref() {
        None | Some("parentbased_always_on") => SamplerChoice::ParentBasedAlwaysOn,
        Some("always_on") => SamplerChoice::AlwaysOn,
        Some("always_off") => SamplerChoice::AlwaysOff,
        Some("traceidratio") => SamplerChoice::TraceIdRatio(ratio()?),
        Some("parentbased_always_off") => SamplerChoice::ParentBasedAlwaysOff,
        Some("parentbased_traceidratio") => SamplerChoice::ParentBasedTraceIdRatio(ratio()?),
        Some(v) => {
            return Err(invalid(
                "OTEL_TRACES_SAMPLER",
                v,
                "always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off or parentbased_traceidratio",
            ));
        }
    })
}

fn invalid(var: &str, value: &str, expected: &str) -> Error {
    Error::Config(format!("{var}={value:?} is not valid: expected {expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<OtelConfig, Error> {
        OtelConfig::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn no_endpoint_means_no_export() {
        let c = config(&[("OTEL_TRACES_SAMPLER", "always_on")]).unwrap();
        assert!(!c.export);
        assert_eq!(c.sampler, SamplerChoice::AlwaysOn);
        assert!(
            config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")])
                .unwrap()
                .export
        );
        assert!(
            config(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:4318/v1/traces"
            )])
            .unwrap()
            .export
        );
    }

    #[test]
    fn disabled_sdk_or_none_exporter_means_no_export() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert!(
            !config(&[endpoint, ("OTEL_SDK_DISABLED", "true")])
                .unwrap()
                .export
        );
        assert!(
            !config(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])
                .unwrap()
                .export
        );
        assert!(
            config(&[endpoint, ("OTEL_SDK_DISABLED", "false")])
                .unwrap()
                .export
        );
    }

    #[test]
    fn protocol_and_sampler() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.sampler, SamplerChoice::TraceIdRatio(0.25));
        assert_eq!(
            config(&[]).unwrap().sampler,
            SamplerChoice::ParentBasedAlwaysOn
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_SDK_DISABLED", "yes"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_TRACES_EXPORTER", "jaeger"),
        ] {
            let e = config(&[(var, value)]).unwrap_err().to_string();
            assert!(e.contains(var), "{e}");
        }
        let e = config(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
    }

    #[test]
    fn service_name_from_either_variable() {
        assert!(!config(&[]).unwrap().service_name_set);
        assert!(
            config(&[("OTEL_SERVICE_NAME", "gw")])
                .unwrap()
                .service_name_set
        );
        assert!(
            config(&[("OTEL_RESOURCE_ATTRIBUTES", "a=b, service.name=gw")])
                .unwrap()
                .service_name_set
        );
    }
}
