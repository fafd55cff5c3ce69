//! A backend's API key: never printed, and redacted from whatever a backend says back.

use std::fmt;

/// An API key: never printed.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct ApiKey(pub String);

impl ApiKey {
    /// `bytes` with every occurrence of the key replaced by `[redacted]`: a backend may
    /// echo it (`Incorrect API key provided: …`), and what it says is kept and shown.
    /// A key shorter than 8 bytes is not looked for (it would garble the text and is no
    /// secret anyway).
    pub fn redact<'a>(&self, bytes: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let key = self.0.as_bytes();
        if key.len() < 8 || memchr::memmem::find(bytes, key).is_none() {
            return std::borrow::Cow::Borrowed(bytes);
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut rest = 0;
        for at in memchr::memmem::find_iter(bytes, key) {
            if at >= rest {
                out.extend_from_slice(&bytes[rest..at]);
                out.extend_from_slice(b"[redacted]");
                rest = at + key.len();
            }
        }
        out.extend_from_slice(&bytes[rest..]);
        std::borrow::Cow::Owned(out)
    }

    /// [`redact`](Self::redact) of text.
    pub fn redact_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.redact(text.as_bytes())).into_owned()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}
