//! A smoke run of `scripts/bench-capacity`: turngate, the bare webrtc-rs receiver and the
//! Pion receiver each take 10 sessions for 5 s, and every packet sent is counted by the
//! receiver. It checks that the tools work and the counters match, not a speed: the
//! figures go into BENCHMARKS.md from full runs of the script.

use turngate_e2e::workspace;

#[tokio::test]
async fn the_capacity_benchmark_runs_all_three_receivers_and_counts_every_packet()
-> anyhow::Result<()> {
    // The gateway as the sources are now (the script runs target/debug/turngate).
    turngate_e2e::binary();
    let output = tokio::process::Command::new(workspace().join("scripts/bench-capacity"))
        .args(["10", "5", "1"])
        // The suite's debug builds, in the suite's loopback-only network namespace.
        .env("BENCH_PROFILE", "debug")
        .env("BENCH_NO_BUILD", "1")
        .env("BENCH_IN_NETNS", "1")
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "bench-capacity failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(
        &stdout[stdout
            .find("{\n  \"summary\"")
            .ok_or_else(|| anyhow::anyhow!("no summary:\n{stdout}"))?..],
    )?;
    for receiver in ["turngate", "bare", "pion"] {
        let r = &summary["summary"][receiver];
        let sent = r["packets_sent"].as_u64().unwrap_or(0);
        // 10 sessions × 5 s × 50 packets/s.
        assert_eq!(sent, 2500, "{receiver}: {r:#}");
        assert_eq!(r["packets_received"], sent, "{receiver}: {r:#}");
        assert_eq!(r["mismatched_sessions"], 0, "{receiver}: {r:#}");
        assert!(r["cpu_millicores_per_session"].as_f64().unwrap_or(0.0) > 0.0);
    }
    assert!(
        summary["ratios"]["cpu_vs_bare"].as_f64().is_some(),
        "{summary:#}"
    );
    Ok(())
}
