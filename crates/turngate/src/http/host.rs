//! Which `Host` a request may name: the defence against DNS rebinding, where a web page
//! rebinds its own name to the gateway's address — its requests still carry that name.
//!
//! The host a request names is its absolute-form URI's authority if it has one, else
//! its one `Host` header (RFC 9112 §3.2.2); two `Host` headers, userinfo, or a value
//! that is not an authority name nothing. Addresses compare as addresses
//! (`[0:0:0:0:0:0:0:1]` is `::1`), names case-insensitively.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::{HeaderMap, Uri, header, uri::Authority};

/// The hosts a gateway serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedHosts {
    /// Any (`http.allowed_hosts = ["*"]`).
    Any,
    /// These names and addresses, and, if `any_address`, every address literal: a
    /// gateway listening on all interfaces cannot know its addresses, and rebinding
    /// needs a name.
    Listed {
        names: Vec<String>,
        addresses: Vec<IpAddr>,
        any_address: bool,
    },
}

impl AllowedHosts {
    /// The policy for `configured` (`http.allowed_hosts`) on `listen`. Empty: the
    /// listen address and `localhost`; on an unspecified listen address, `localhost`
    /// and any address literal.
    pub fn new(configured: &[String], listen: SocketAddr) -> Self {
        if configured.iter().any(|h| h == "*") {
            return Self::Any;
        }
        let mut names = Vec::new();
        let mut addresses = Vec::new();
        let defaults = [listen.ip().to_string(), "localhost".to_owned()];
        let entries = if configured.is_empty() {
            &defaults[..]
        } else {
            configured
        };
        for entry in entries {
            let entry = entry.trim_start_matches('[').trim_end_matches(']');
            match entry.parse::<IpAddr>() {
                Ok(ip) => addresses.push(ip),
                Err(_) => names.push(entry.to_ascii_lowercase()),
            }
        }
        Self::Listed {
            names,
            addresses,
            any_address: configured.is_empty() && listen.ip().is_unspecified(),
        }
    }

    /// Whether a request with `uri` and `headers` names a host served here; the host it
    /// names (for the refusal's message) if not.
    pub fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), String> {
        let Self::Listed {
            names,
            addresses,
            any_address,
        } = self
        else {
            return Ok(());
        };
        let named =
            requested_host(uri, headers).ok_or_else(|| "no single valid Host".to_owned())?;
        let allowed = match &named {
            Host::Address(ip) => *any_address || addresses.contains(ip),
            Host::Name(name) => names.contains(name),
        };
        if allowed {
            Ok(())
        } else {
            Err(match named {
                Host::Address(ip) => ip.to_string(),
                Host::Name(name) => name,
            })
        }
    }
}

/// A host a request names.
#[derive(Debug, PartialEq, Eq)]
enum Host {
    Address(IpAddr),
    Name(String),
}

/// The host a request names, or `None` if it names none clearly. See the module docs.
fn requested_host(uri: &Uri, headers: &HeaderMap) -> Option<Host> {
    let authority = match uri.authority() {
        Some(authority) => authority.clone(),
        None => {
            let mut values = headers.get_all(header::HOST).iter();
            let value = values.next()?;
            if values.next().is_some() {
                return None;
            }
            Authority::from_str(value.to_str().ok()?).ok()?
        }
    };
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse().ok().map(Host::Address);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Host::Address(ip));
    }
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then(|| Host::Name(host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: &AllowedHosts, uri: &str, hosts: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(header::HOST, h.parse().unwrap());
        }
        policy.check(&uri.parse().unwrap(), &headers).is_ok()
    }

    #[test]
    fn a_loopback_gateway_serves_its_address_and_localhost_only() {
        let policy = AllowedHosts::new(&[], "127.0.0.1:8080".parse().unwrap());
        assert!(check(&policy, "/v1/whip", &["127.0.0.1:8080"]));
        assert!(check(&policy, "/v1/whip", &["LOCALHOST:8080"]));
        assert!(check(&policy, "/v1/whip", &["localhost"]));
        for refused in [
            "evil.example:8080",
            "localhost.",
            "127.0.0.1.",
            "[localhost]evil",
            "127.0.0.1:80@evil.example",
            "10.0.0.1",
            "",
        ] {
            assert!(!check(&policy, "/", &[refused]), "{refused}");
        }
        assert!(!check(&policy, "/", &[]), "no Host");
        assert!(!check(&policy, "/", &["localhost", "evil.example"]), "two");
        // An absolute-form target names its host itself.
        assert!(!check(
            &policy,
            "http://evil.example/v1/sessions",
            &["127.0.0.1"]
        ));
        assert!(check(
            &policy,
            "http://127.0.0.1:8080/v1/sessions",
            &["evil.example"]
        ));
    }

    #[test]
    fn addresses_compare_as_addresses() {
        let policy = AllowedHosts::new(&[], "[::1]:8080".parse().unwrap());
        assert!(check(&policy, "/", &["[::1]:8080"]));
        assert!(check(&policy, "/", &["[0:0:0:0:0:0:0:1]:8080"]));
        assert!(!check(&policy, "/", &["[::2]"]));
    }

    #[test]
    fn all_interfaces_serve_any_address_but_only_listed_names() {
        let policy = AllowedHosts::new(&[], "0.0.0.0:8080".parse().unwrap());
        assert!(check(&policy, "/healthz", &["10.1.2.3:8080"]));
        assert!(check(&policy, "/healthz", &["localhost"]));
        assert!(!check(&policy, "/healthz", &["gateway.example"]));
        let named = AllowedHosts::new(&["gateway.example".into()], "0.0.0.0:8080".parse().unwrap());
        assert!(check(&named, "/", &["Gateway.Example:443"]));
        assert!(!check(&named, "/", &["10.1.2.3"]));
        assert_eq!(
            AllowedHosts::new(&["*".into()], "0.0.0.0:1".parse().unwrap()),
            AllowedHosts::Any
        );
    }
}
