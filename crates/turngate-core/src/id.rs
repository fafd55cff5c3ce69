//! Identifiers: session and turn ids (ULID layout, valid W3C trace-ids), span ids and
//! the strict W3C `traceparent` parser.
//!
//! A gateway-minted id is 16 bytes: a 48-bit big-endian Unix timestamp in milliseconds
//! followed by 80 random bits. It carries no UUID version or variant bits, so bytes 8–15
//! are uniformly random, which is what trace-id-ratio samplers read. Written as 32
//! lowercase hex characters, it sorts by creation time and is a valid W3C trace-id.

use std::fmt;
use std::str::FromStr;

use rand_core::Rng;

use crate::error::Error;

/// Builds a 16-byte id from a millisecond timestamp and 80 random bits.
fn ulid_bytes(unix_ms: u64, rng: &mut impl Rng) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    // 80 random bits are all zero with probability 2^-80; the timestamp keeps the id
    // non-zero anyway for any time after 1970-01-01T00:00:00.001Z.
    rng.fill_bytes(&mut bytes[6..]);
    bytes
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// Parses exactly `N` bytes from `2 * N` lowercase hex characters.
pub(crate) fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], Error> {
    let raw = s.as_bytes();
    if raw.len() != 2 * N {
        return Err(Error::IdLength {
            expected: 2 * N,
            found: raw.len(),
        });
    }
    let mut out = [0u8; N];
    for (i, pair) in raw.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(out)
}

fn nibble(c: u8) -> Result<u8, Error> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(Error::IdNotLowercaseHex),
    }
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            /// The raw bytes.
            pub fn to_bytes(self) -> [u8; $len] {
                self.0
            }

            /// Wraps raw bytes; refuses the all-zero value, which W3C Trace Context
            /// reserves as invalid.
            pub fn from_bytes(bytes: [u8; $len]) -> Result<Self, Error> {
                if bytes == [0u8; $len] {
                    return Err(Error::IdAllZero);
                }
                Ok(Self(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "("))?;
                write_hex(f, &self.0)?;
                write!(f, ")")
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                Self::from_bytes(parse_hex::<$len>(s)?)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// A turn id: 16 bytes, 32 lowercase hex characters, and the trace id of the turn's
    /// root span. Gateway-minted ones use the ULID layout; client-supplied ones may be any
    /// valid trace-id.
    TurnId,
    16
);
hex_id!(
    /// A session id: 16 bytes in the ULID layout, 32 lowercase hex characters. Also the
    /// `gen_ai.conversation.id` of the session's spans. Not a secret: the WHIP resource id is.
    SessionId,
    16
);
hex_id!(
    /// An OpenTelemetry span id: 8 bytes, 16 lowercase hex characters, never all zero.
    SpanId,
    8
);

impl TurnId {
    /// Mints a time-sortable turn id.
    pub fn mint(unix_ms: u64, rng: &mut impl Rng) -> Self {
        Self(ulid_bytes(unix_ms, rng))
    }

    /// The millisecond timestamp of a gateway-minted id (meaningless for client ids).
    pub fn unix_ms(self) -> u64 {
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(ms)
    }
}

impl SessionId {
    /// Mints a time-sortable session id.
    pub fn mint(unix_ms: u64, rng: &mut impl Rng) -> Self {
        Self(ulid_bytes(unix_ms, rng))
    }
}

impl SpanId {
    /// Draws a random, non-zero span id.
    pub fn random(rng: &mut impl Rng) -> Self {
        loop {
            let mut bytes = [0u8; 8];
            rng.fill_bytes(&mut bytes);
            if let Ok(id) = Self::from_bytes(bytes) {
                return id;
            }
        }
    }
}

/// A W3C Trace Context `traceparent` header value.
///
/// Parsing is strict: lowercase hex only, exact field lengths, the invalid version `ff`
/// refused, all-zero trace or parent ids refused. Versions above `00` are accepted as the
/// specification asks (their first four fields parsed as version `00`, anything after a
/// further `-` ignored); version `00` must be exactly 55 characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace id; for a turn, the turn id.
    pub trace_id: TurnId,
    /// The id of the span that is the parent of whatever receives this header.
    pub parent_id: SpanId,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

impl FromStr for TraceParent {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        const V00_LEN: usize = 55;
        let bad = |why: &'static str| Error::TraceParent(why);
        if s.len() < V00_LEN || !s.is_ascii() {
            return Err(bad("shorter than 55 characters"));
        }
        let version = parse_hex::<1>(&s[0..2])
            .map_err(|_| bad("version is not two lowercase hex digits"))?[0];
        match version {
            0xff => return Err(bad("version ff is invalid")),
            0x00 if s.len() != V00_LEN => {
                return Err(bad("version 00 must be exactly 55 characters"));
            }
            0x00 => {}
            _ if s.len() > V00_LEN && s.as_bytes()[V00_LEN] != b'-' => {
                return Err(bad("fields of a future version must be separated by '-'"));
            }
            _ => {}
        }
        let dashes = [2, 35, 52];
        if dashes.iter().any(|&i| s.as_bytes()[i] != b'-') {
            return Err(bad("fields must be separated by '-'"));
        }
        let trace_id = s[3..35]
            .parse::<TurnId>()
            .map_err(|_| bad("trace-id must be 32 lowercase hex digits, not all zero"))?;
        let parent_id = s[36..52]
            .parse::<SpanId>()
            .map_err(|_| bad("parent-id must be 16 lowercase hex digits, not all zero"))?;
        let flags = parse_hex::<1>(&s[53..55])
            .map_err(|_| bad("trace-flags must be two lowercase hex digits"))?[0];
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn minted_ids_sort_by_time_and_round_trip() {
        let mut rng = StdRng::seed_from_u64(7);
        let a = TurnId::mint(1_700_000_000_000, &mut rng);
        let b = TurnId::mint(1_700_000_000_001, &mut rng);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.unix_ms(), 1_700_000_000_000);
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(a.to_string().parse::<TurnId>().unwrap(), a);
    }

    #[test]
    fn ids_refuse_uppercase_zero_and_wrong_length() {
        assert_eq!("0".repeat(32).parse::<TurnId>(), Err(Error::IdAllZero));
        assert_eq!(
            "A".repeat(32).parse::<TurnId>(),
            Err(Error::IdNotLowercaseHex)
        );
        assert!(matches!(
            "ab".parse::<TurnId>(),
            Err(Error::IdLength { .. })
        ));
        assert!("0af7651916cd43dd8448eb211c80319c".parse::<TurnId>().is_ok());
    }

    #[test]
    fn traceparent_strict_parsing() {
        let ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let tp: TraceParent = ok.parse().unwrap();
        assert_eq!(tp.to_string(), ok);
        assert!(tp.sampled());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-é",
        ] {
            assert!(
                bad.parse::<TraceParent>().is_err(),
                "{bad:?} should be refused"
            );
        }
        // A future version may append fields.
        let future = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra";
        assert_eq!(future.parse::<TraceParent>().unwrap().flags, 1);
    }
}
