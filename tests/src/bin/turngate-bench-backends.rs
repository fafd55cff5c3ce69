//! Backends for `scripts/bench-compare`: the fake OpenAI-compatible server and an
//! OTLP/HTTP receiver, on loopback. Prints one JSON line with their URLs, serves until
//! interrupted (SIGINT), then prints how many spans it received.

use turngate_e2e::fake_openai::fake_openai;
use turngate_e2e::otlp::Collector;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (openai, _seen) = fake_openai().await?;
    let collector = Collector::http().await?;
    println!(
        "{}",
        serde_json::json!({"openai": openai, "otlp": collector.endpoint})
    );
    tokio::signal::ctrl_c().await?;
    eprintln!("spans received: {}", collector.spans().len());
    Ok(())
}
