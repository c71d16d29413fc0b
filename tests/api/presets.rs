//! Presets (home, away, eco) through `/command`, the `away` the status clients read, and HVAC
//! runtime per day (`GET /api/runtime`).

use roost::sim::ThermostatState;
use roost::sim::http::Request;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app.control.send(&Request::get(path)).await.expect("request");
    (r.status(), r.json().unwrap_or(Value::Null))
}

async fn away(app: &TestApp) -> (Value, Value) {
    let (_, status) = get(app, &format!("/status?serial={SERIAL}")).await;
    let (_, devices) = get(app, "/api/devices").await;
    (status["away"].clone(), devices["devices"][0]["away"].clone())
}

fn manual_eco(s: &ThermostatState) -> Option<bool> {
    s.buckets
        .iter()
        .find(|(k, _)| k.starts_with("structure."))
        .and_then(|(_, b)| b.value.get("manual_eco_all")?.as_bool())
}

#[tokio::test]
async fn eco_and_away_are_different_presets_and_status_away_follows_away_only() {
    let tmp = tempfile::tempdir().unwrap();
    let app = TestApp::start_in(tmp.path().to_path_buf(), &[]).await;
    let t = app.booted(SERIAL).await;
    let stop = CancellationToken::new();
    let runner = t.run(stop.clone());
    assert_eq!(away(&app).await, (json!(false), json!(false)));

    // Eco enters manual eco, as set_away does; someone is still home.
    let r = app.command(SERIAL, "set_preset", json!("eco")).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    t.wait_for(WAIT, "manual eco", |s| manual_eco(s) == Some(true)).await.unwrap();
    assert_eq!(away(&app).await, (json!(false), json!(false)));

    // Away is the same manual eco, and away.
    assert_eq!(app.command(SERIAL, "set_preset", json!("away")).await.status(), 200);
    assert_eq!(away(&app).await, (json!(true), json!(true)));
    // set_away keeps its meaning for the existing clients.
    assert_eq!(app.command(SERIAL, "set_away", json!(false)).await.status(), 200);
    t.wait_for(WAIT, "eco left", |s| manual_eco(s) == Some(false)).await.unwrap();
    assert_eq!(away(&app).await, (json!(false), json!(false)));
    assert_eq!(app.command(SERIAL, "set_away", json!(true)).await.status(), 200);
    assert_eq!(away(&app).await, (json!(true), json!(true)));
    assert_eq!(app.command(SERIAL, "set_preset", json!("none")).await.status(), 200);
    t.wait_for(WAIT, "eco left", |s| manual_eco(s) == Some(false)).await.unwrap();
    assert_eq!(away(&app).await.0, json!(false));

    // Eco the thermostat started because nobody is home is away.
    t.set_local("device", json!({"eco": {"mode": "auto-eco"}})).await.unwrap();
    assert_eq!(away(&app).await, (json!(true), json!(true)));
    t.set_local("device", json!({"eco": {"mode": "schedule"}})).await.unwrap();

    let r = app.command(SERIAL, "set_preset", json!("sleep")).await;
    assert_eq!(r.status(), 400);
    assert!(String::from_utf8_lossy(&r.body).contains("home, away, eco, none"));

    // The asked preset survives a restart: eco is still not away.
    assert_eq!(app.command(SERIAL, "set_preset", json!("eco")).await.status(), 200);
    t.wait_for(WAIT, "manual eco", |s| manual_eco(s) == Some(true)).await.unwrap();
    stop.cancel();
    runner.await.unwrap();
    app.stop().await;
    let app = TestApp::start_in(tmp.path().to_path_buf(), &[]).await;
    assert_eq!(away(&app).await.0, json!(false), "eco is remembered across a restart");
    app.stop().await;
}

#[tokio::test]
async fn runtime_per_stage_per_day() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    t.set_local("shared", json!({"hvac_heater_state": true, "hvac_fan_state": true})).await.unwrap();
    let (status, body) = get(&app, &format!("/api/runtime?serial={SERIAL}&days=3&tz=60")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tz"], 60);
    let days = body["days"].as_array().unwrap();
    assert_eq!(days.len(), 3);
    for day in days {
        for stage in ["heat", "cool", "fan", "aux"] {
            assert!(day[stage].as_i64().is_some_and(|s| s >= 0), "{day}");
        }
        assert_eq!(day["date"].as_str().map(str::len), Some(10), "{day}");
    }
    assert!(days[0]["start"].as_i64() < days[2]["start"].as_i64(), "oldest first");
    assert_eq!(days[2]["start"].as_i64().unwrap() - days[1]["start"].as_i64().unwrap(), 86_400_000);
    assert_eq!(days[2]["cool"], 0, "cooling never ran");

    let (status, _) = get(&app, &format!("/api/runtime?serial={SERIAL}")).await;
    assert_eq!(status, 200);
    for bad in ["days=0", "days=91", "days=x", "tz=900", "tz=-1.5"] {
        let (status, body) = get(&app, &format!("/api/runtime?serial={SERIAL}&{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string() || body["message"].is_string(), "{bad}: {body}");
    }
    assert_eq!(get(&app, "/api/runtime?serial=02AA01AC00000009").await.0, 404);
    assert_eq!(get(&app, "/api/runtime").await.0, 400);
}
