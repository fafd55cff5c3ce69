//! A real S3 API on loopback for the turn-record tests: moto's server (from the test
//! virtual environment, in memory), with one bucket.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::{free_tcp_port, workspace};

/// The bucket the tests record into.
pub const BUCKET: &str = "records";

/// A running S3 server.
pub struct S3 {
    child: Option<Child>,
    port: u16,
}

impl S3 {
    /// Starts the server on a free loopback port and makes [`BUCKET`].
    pub async fn start() -> anyhow::Result<Self> {
        let mut s3 = Self {
            child: None,
            port: free_tcp_port(),
        };
        s3.restart().await?;
        Ok(s3)
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The gateway's (or the CLI's) environment for recording into `s3://records/{prefix}`.
    pub fn env(&self, prefix: &str) -> Vec<(&'static str, String)> {
        vec![
            ("TURNGATE_STORE_URL", format!("s3://{BUCKET}/{prefix}")),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Stops the server: the store is down (and, in memory, empty).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same port, with an empty bucket.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        let server = workspace().join(".venv/bin/moto_server");
        anyhow::ensure!(
            server.exists(),
            "{} is missing: run scripts/test",
            server.display()
        );
        self.child = Some(
            Command::new(server)
                .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting moto_server")?,
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let bucket = format!("{}/{BUCKET}", self.endpoint());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.put(&bucket).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the S3 server did not start");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
