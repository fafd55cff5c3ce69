//! The gateway's web pages in headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from npm: `tests/browser/demo_to_inspector.mjs`), as a newcomer
//! and then an operator use them: the demo page with a fake microphone playing a speech
//! fixture and an image uploaded over the data channel, then the turn's inspector.
//! Also the pages' headers, and what they refuse. Runs inside the suite's loopback-only
//! network namespace (`scripts/test`); `scripts/test` installs playwright-core.

use std::process::Stdio;

use anyhow::Context;
use serde_json::Value;
use turngate_e2e::fake_openai::*;
use turngate_e2e::*;

/// The manifest of `turn`, once it is written.
async fn manifest(gw: &Gateway, turn: &str) -> anyhow::Result<Value> {
    for _ in 0..100 {
        let (status, body) = gw.get(&format!("/v1/turns/{turn}")).await?;
        if status == 200 {
            return Ok(body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("no record of {turn}")
}

/// Runs a browser script under `node` (with `node_args`) against `gw`, with the tokens,
/// the image to show (a 320×200 PNG) and `env`; returns the facts it printed.
async fn browse(
    gw: &Gateway,
    script: &str,
    node_args: &[&str],
    env: &[(&str, std::path::PathBuf)],
) -> anyhow::Result<Value> {
    let out = std::env::temp_dir().join(format!("turngate-pages-{}-{script}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    let image = out.join("shown.png");
    std::fs::write(&image, png(320, 200))?;
    let run = tokio::process::Command::new("node")
        .args(node_args)
        .arg(workspace().join("tests/browser").join(script))
        .env("BASE", &gw.base)
        .env("CLIENT_TOKEN", gw.client_token().context("harness keys")?)
        .env("ADMIN_TOKEN", tokens::ADMIN_TOKEN)
        .env("IMAGE", &image)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), run).await??;
    let _ = std::fs::remove_dir_all(&out);
    anyhow::ensure!(
        output.status.success(),
        "the browser run failed:\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        gw.log()
    );
    serde_json::from_slice(&output.stdout)
        .with_context(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What the inspector showed of `turn` (`facts`) against its record and the turn: the
/// transcript, the image as uploaded, the audio's duration (within 50 ms), a `206` to a
/// Range, the prompt; and no error in the pages' console.
async fn assert_inspected(gw: &Gateway, facts: &Value) -> anyhow::Result<Value> {
    let turn = facts["turn_id"].as_str().context("a turn id")?;
    let m = manifest(gw, turn).await?;
    assert_eq!(facts["transcript"], TRANSCRIPT, "{facts:#}");
    assert_eq!(facts["image_natural_width"], 320);
    assert_eq!(facts["range_status"], 206);
    let duration_ms = facts["audio_duration_s"].as_f64().unwrap() * 1000.0;
    let audio_ms = m["counters"]["audio_ms"].as_f64().unwrap();
    let frames_ms = m["counters"]["frames"].as_f64().unwrap() * 20.0;
    assert!(
        (duration_ms - audio_ms).abs() <= 50.0 && (duration_ms - frames_ms).abs() <= 50.0,
        "the player's {duration_ms} ms, the record's {audio_ms} ms, the turn's frames {frames_ms} ms"
    );
    let prompt = facts["prompt"].as_str().unwrap();
    assert!(prompt.contains(TRANSCRIPT), "{prompt}");
    assert!(prompt.contains(DESCRIPTION), "{prompt}");
    let errors: Vec<&Value> = facts["console"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l.as_str()
                .is_some_and(|l| l.starts_with("error") || l.starts_with("pageerror"))
        })
        .collect();
    assert!(errors.is_empty(), "the pages logged errors: {errors:?}");
    Ok(m)
}

#[tokio::test]
async fn a_turn_spoken_on_the_demo_page_is_seen_whole_in_its_inspector() -> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let mut env = backend_env(&base, &base, &base);
    env.push((
        "TURNGATE_TRACE_URL_TEMPLATE",
        "http://127.0.0.1:16686/trace/{trace_id}".into(),
    ));
    let gw = start_with(&env).await?;
    // The screenshot goes with the test output (target/, kept after the run).
    let shots = workspace().join("target/test-output");
    std::fs::create_dir_all(&shots)?;
    let screenshot = shots.join("inspector.png");
    let facts = browse(
        &gw,
        "demo_to_inspector.mjs",
        &[],
        &[
            ("AUDIO", data("speech-48k.wav")),
            ("SCREENSHOT", screenshot.clone()),
        ],
    )
    .await?;
    let turn = facts["turn_id"].as_str().context("a turn id")?;
    assert_inspected(&gw, &facts).await?;
    // The demo page showed the turn live.
    let demo = facts["demo_text"].as_str().unwrap();
    assert!(demo.contains(TRANSCRIPT), "{demo}");
    assert!(demo.contains(&DELTAS.concat()), "{demo}");
    assert_eq!(facts["answer"], DELTAS.concat());
    assert!(
        facts["image_caption"]
            .as_str()
            .unwrap()
            .contains(&sha256_hex(&png(320, 200))),
        "{facts:#}"
    );
    let prompt = facts["prompt"].as_str().unwrap();
    // What the LLM backend got is what the inspector shows.
    let got = seen
        .lock()
        .unwrap()
        .chats
        .iter()
        .find(|c| c["user"] == turn && c["stream"] == true)
        .cloned()
        .context("the LLM's request for the turn")?;
    let user = got["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(prompt.contains(&user), "{prompt}\n---\n{user}");
    assert!(facts["timeline_rows"].as_u64().unwrap() >= 3, "{facts:#}");
    assert!(
        facts["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "All turns of the session")
    );
    assert!(screenshot.exists());
    // The trace link, the playhead on the audio's bar, nothing moving once shown.
    assert_eq!(
        facts["trace"],
        format!("http://127.0.0.1:16686/trace/{turn}").as_str()
    );
    let off = facts["playhead_offset_px"].as_f64().unwrap();
    assert!(
        off.abs() <= 3.0,
        "the playhead is {off} px off the audio's middle"
    );
    let shift = facts["layout_shift"].as_f64().unwrap();
    assert!(shift < 0.01, "layout shift {shift}");
    // Push to talk.
    assert_eq!(facts["held"]["cause"], "client", "{facts:#}");
    assert_eq!(facts["released"]["reason"], "client_end", "{facts:#}");
    Ok(())
}

#[tokio::test]
async fn the_inspector_works_in_firefox_too() -> anyhow::Result<()> {
    let (base, _seen) = fake_openai().await?;
    let gw = start_with(&backend_env(&base, &base, &base)).await?;
    // A turn with speech and the image, from the webrtc-rs client (Firefox gathers no
    // loopback ICE candidate in the suite's network namespace).
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let (completed, _) = client_turn(&client, 1, Some(&png(320, 200))).await?;
    let turn = completed["turn_id"].as_str().unwrap().to_owned();
    manifest(&gw, &turn).await?;
    // A second turn, whose LLM request goes missing from the store.
    let (completed, _) = client_turn(&client, 2, None).await?;
    let broken = completed["turn_id"].as_str().unwrap().to_owned();
    let m = manifest(&gw, &broken).await?;
    let session = m["session_id"].as_str().unwrap();
    std::fs::remove_file(gw.store.join(format!(
        "sessions/{session}/turns/{broken}/backends/llm.1.request.json"
    )))?;
    let facts = browse(
        &gw,
        "firefox_pages.mjs",
        &["--experimental-websocket", "--no-warnings"],
        &[("TURN", turn.into()), ("BROKEN", broken.clone().into())],
    )
    .await?;
    // The next turn is linked, with its session; its page shows what can be read.
    assert_eq!(
        facts["next"],
        format!("/turns/{broken}?session={session}").as_str()
    );
    let shown = &facts["broken"];
    assert_eq!(shown["turn"], broken.as_str(), "{facts:#}");
    assert_eq!(shown["transcript"], TRANSCRIPT);
    assert!(shown["record_facts"].as_u64().unwrap() > 10, "{shown:#}");
    assert!(shown["artifacts"].as_u64().unwrap() > 3, "{shown:#}");
    assert!(
        shown["problems"].to_string().contains("could not be read"),
        "{shown:#}"
    );
    assert!(
        facts["user_agent"].as_str().unwrap().contains("Firefox"),
        "{facts:#}"
    );
    assert_eq!(facts["demo_title"], "turngate demo");
    assert_inspected(&gw, &facts).await?;
    Ok(())
}

#[tokio::test]
async fn pages_carry_their_policy_and_operator_pages_ask_to_sign_in() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    // The demo page (on by default on loopback): no inline script, nothing foreign.
    let demo = plain.get(format!("{}/", gw.base)).send().await?;
    assert_eq!(demo.status(), 200);
    let csp = demo.headers()["content-security-policy"]
        .to_str()?
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = demo.text().await?;
    // Every script is loaded from the gateway by src: none is inline.
    let scripts: Vec<&str> = html
        .split("<script")
        .skip(1)
        .map(|tag| &tag[..tag.find('>').unwrap_or(tag.len())])
        .collect();
    assert!(!scripts.is_empty(), "{html}");
    assert!(
        scripts.iter().all(|tag| tag.contains("src=\"/ui/")),
        "{scripts:?}"
    );
    // An operator page without the credential: to the sign-in form and back.
    let turn = "0af7651916cd43dd8448eb211c80319c";
    let page = plain
        .get(format!("{}/turns/{turn}?session=x", gw.base))
        .send()
        .await?;
    assert_eq!(page.status(), 303);
    assert_eq!(
        page.headers()["location"],
        format!("/login?next=%2Fturns%2F{turn}%3Fsession%3Dx").as_str()
    );
    let form = plain
        .get(format!("{}/login?next=/turns/{turn}", gw.base))
        .send()
        .await?
        .text()
        .await?;
    assert!(form.contains(&format!("value=\"/turns/{turn}\"")), "{form}");
    // A next that is not a local path is not taken.
    let form = plain
        .get(format!("{}/login?next=//evil.example/", gw.base))
        .send()
        .await?
        .text()
        .await?;
    assert!(!form.contains("evil"), "{form}");
    // With it, the page.
    let page = gw
        .http
        .get(format!("{}/turns/{turn}", gw.base))
        .send()
        .await?;
    assert_eq!(page.status(), 200);
    assert!(page.headers().contains_key("content-security-policy"));
    // Assets: the scripts are served as such; nothing else is.
    let js = plain
        .get(format!("{}/ui/inspector.js", gw.base))
        .send()
        .await?;
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let missing = plain
        .get(format!("{}/ui/nothing.js", gw.base))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    let config = plain
        .get(format!("{}/ui/config.json", gw.base))
        .send()
        .await?;
    assert_eq!(config.status(), 401, "the configuration is the operator's");

    // Off the loopback default, or turned off: no demo page.
    let off = Gateway::start(&[], &[("TURNGATE_UI_DEMO", "false")]).await?;
    let (status, body) = off.get("/").await?;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    Ok(())
}
