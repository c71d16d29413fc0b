//! The history behind the web UI's charts: recorded as changes are committed, served as JSON
//! and SVG, pruned after HISTORY_DAYS.

use std::time::Duration;

use roost::sim::http::Request;
use serde_json::{Value, json};

use crate::helpers::*;

async fn history(app: &TestApp, query: &str) -> (u16, Value) {
    let r = app.control.send(&Request::get(&format!("/api/history?{query}"))).await.unwrap();
    (r.status(), r.json().unwrap())
}

/// Waits until the history has at least `n` points (it is recorded off the request path).
async fn points(app: &TestApp, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let (_, body) = history(app, &format!("serial={SERIAL}&since=1h")).await;
        let points = body["points"].as_array().cloned().unwrap_or_default();
        if points.len() >= n {
            return points;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("history never reached {n} points");
}

#[tokio::test]
async fn changes_are_recorded_and_served_as_json_and_svg() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    t.set_local("shared", json!({"hvac_heater_state": true, "current_temperature": 19.0})).await.unwrap();
    t.set_local("shared", json!({"hvac_heater_state": false, "current_temperature": 20.5})).await.unwrap();
    // A change that does not touch what is charted records nothing new.
    t.set_local("device", json!({"rssi": 40})).await.unwrap();
    let pts = points(&app, 3).await;
    let heating: Vec<bool> = pts.iter().map(|p| p["heating"].as_bool().unwrap()).collect();
    assert!(heating.contains(&true) && heating.last() == Some(&false), "{pts:?}");
    let last = pts.last().unwrap();
    assert_eq!(last["current_temperature"], json!(20.5));
    assert_eq!(last["target_temperature"], json!(20.0));
    assert_eq!(last["mode"], "heat");
    let keys: Vec<&String> = last.as_object().unwrap().keys().collect();
    assert_eq!(keys[0], "at");
    assert!(pts.windows(2).all(|w| w[0]["at"].as_i64() <= w[1]["at"].as_i64()), "oldest first");

    let (status, body) = history(&app, &format!("serial={SERIAL}&since={}", i64::MAX / 2)).await;
    assert_eq!(status, 200);
    assert_eq!(body["points"], json!([]));
    let (status, _) = history(&app, &format!("serial={SERIAL}&since=soon")).await;
    assert_eq!(status, 400);
    let (status, _) = history(&app, "serial=02AA01AC99999999").await;
    assert_eq!(status, 404);
    let (status, _) = history(&app, "").await;
    assert_eq!(status, 400);

    for range in ["24h", "7d"] {
        let r = app
            .control
            .send(&Request::get(&format!("/api/history/chart.svg?serial={SERIAL}&range={range}")))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("content-type"), Some("image/svg+xml"));
        let svg = String::from_utf8(r.body.to_vec()).unwrap();
        assert!(svg.contains("<polyline") && svg.contains("<rect"), "lines and a heating band");
    }
    let r = app.control.send(&Request::get(&format!("/api/history/chart.svg?serial={SERIAL}&range=1y"))).await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn history_older_than_history_days_is_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let app = TestApp::start_in(tmp.path().to_path_buf(), &[]).await;
    app.booted(SERIAL).await;
    let recent = points(&app, 1).await.len();
    app.stop().await;
    // Age what was recorded by 2 days, then start with HISTORY_DAYS=1.
    let db = TestDb::open(&tmp.path().join("roost.sqlite")).await;
    db.execute("UPDATE roost_history SET at_ms = at_ms - 2 * 86400000", &[]).await;
    db.close().await;
    let app = TestApp::start_in(tmp.path().to_path_buf(), &["--history-days=1"]).await;
    assert!(recent >= 1);
    for _ in 0..200 {
        let (_, body) = history(&app, &format!("serial={SERIAL}&since=0")).await;
        if body["points"].as_array().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("old history was never pruned");
}
