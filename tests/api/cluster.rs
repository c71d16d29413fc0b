//! Several nodes on one PostgreSQL database: two roost instances in this process share one
//! schema, as two nodes behind a load balancer share one database. They need PostgreSQL
//! (`ROOST_TEST_POSTGRES`, which `.ci/run` sets); without it each test says so and passes.

use std::time::Duration;

use roost::sim::http::Request;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::events::Stream;
use crate::helpers::*;
use crate::mqtt_support::*;

/// Two nodes on one database, the first started first (it leads).
async fn two_nodes(extra: &[&str]) -> Option<(TempDir, TestApp, TestApp)> {
    if skip_without_postgres() {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = TestApp::start_in(tmp.path().to_path_buf(), extra).await;
    let b = TestApp::start_in(tmp.path().to_path_buf(), extra).await;
    Some((tmp, a, b))
}

async fn stats(app: &TestApp) -> Value {
    app.control.send(&Request::get("/api/stats")).await.unwrap().json().unwrap()
}

/// Waits until `app` leads (or, with `false`, follows).
async fn leads(app: &TestApp, leading: bool) {
    for _ in 0..300 {
        if stats(app).await["storage"]["leader"] == json!(leading) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the node never {}", if leading { "took the lead" } else { "gave up the lead" });
}

/// The ids a stream carried up to and including `last` (a change with a named event is two
/// frames with one id).
async fn ids_until(stream: &mut Stream, last: i64) -> Vec<i64> {
    let mut ids: Vec<i64> = Vec::new();
    while ids.last() != Some(&last) {
        let event = stream.next_event().await.unwrap_or_else(|| panic!("the stream stopped before id {last}: {ids:?}"));
        let id: i64 = event.id.as_deref().expect("every event has an id").parse().unwrap();
        if ids.last() != Some(&id) {
            ids.push(id);
        }
    }
    ids
}

#[tokio::test]
async fn a_command_on_one_node_reaches_a_subscribe_held_on_the_other_and_every_stream_carries_every_change() {
    let Some((tmp, a, b)) = two_nodes(&[]).await else { return };
    assert_eq!(stats(&a).await["storage"]["engine"], "postgres");
    let all = "/api/events?events=command,availability,pairing";
    let mut stream_a = Stream::open(&a.control, all, None).await;
    let mut stream_b = Stream::open(&b.control, all, None).await;

    let t = a.booted(SERIAL).await;
    let (mut held, _) = t.open_subscribe().await.unwrap();
    assert_eq!(b.command(SERIAL, "set_temperature", json!(23.5)).await.status(), 200);
    let chunk = held.next_chunk_within(WAIT).await.unwrap().expect("a push on the subscribe held by node A");
    assert_eq!(chunk_json(&chunk)["objects"][0]["value"]["target_temperature"], json!(23.5));
    t.apply_chunk(&chunk).await.unwrap(); // acknowledged through node A
    drop(held);
    // The same thermostat through node B, and a command on node A.
    t.via(b.device.clone()).set_local("device", json!({"current_humidity": 44})).await.unwrap();
    assert_eq!(a.command(SERIAL, "set_mode", json!("cool")).await.status(), 200);
    let status: Value =
        b.control.send(&Request::get(&format!("/status?serial={SERIAL}"))).await.unwrap().json().unwrap();
    assert_eq!(status["humidity"], json!(44), "node B reads what was written through it");

    let db = TestDb::open(&tmp.path().join("roost.sqlite")).await;
    let last = db.count("SELECT MAX(id) FROM roost_changes").await;
    let journal = db.count("SELECT COUNT(*) FROM roost_changes").await;
    let ids_a = ids_until(&mut stream_a, last).await;
    let ids_b = ids_until(&mut stream_b, last).await;
    assert!(ids_a.windows(2).all(|w| w[0] < w[1]), "in commit order: {ids_a:?}");
    assert_eq!(ids_a.len() as i64, journal, "node A's stream missed a change: {ids_a:?}");
    assert_eq!(ids_a, ids_b, "both nodes' streams carry the same changes");
    // A client resuming on the other node misses nothing either.
    let middle = ids_a[ids_a.len() / 2];
    let mut resumed = Stream::open(&b.control, all, Some(&middle.to_string())).await;
    let rest = ids_until(&mut resumed, last).await;
    assert_eq!(rest, ids_a.iter().copied().filter(|id| *id > middle).collect::<Vec<_>>());
    db.close().await;
}

#[tokio::test]
async fn a_thermostat_alternating_between_nodes_gets_each_bucket_pushed_once() {
    let Some((_tmp, a, b)) = two_nodes(&[]).await else { return };
    let t = a.booted(SERIAL).await;
    let through = [t.clone(), t.via(b.device.clone())];
    let controls = [&a, &b];
    let shared = format!("shared.{SERIAL}");
    // Each round the thermostat holds its subscribe on the other node, and the command goes
    // through the node it does not hold on. Had a node not known what the other one already
    // pushed, the subscribe would first be answered with buckets the thermostat has.
    for i in 0..6 {
        let here = &through[i % 2];
        let (mut held, _) = here.open_subscribe().await.unwrap();
        let target = 18.0 + i as f64;
        assert_eq!(controls[(i + 1) % 2].command(SERIAL, "set_temperature", json!(target)).await.status(), 200);
        let chunk = held.next_chunk_within(WAIT).await.unwrap().expect("the command is pushed");
        let keys: Vec<Value> =
            chunk_json(&chunk)["objects"].as_array().unwrap().iter().map(|o| o["object_key"].clone()).collect();
        assert_eq!(keys, [json!(shared)], "round {i}: only the command's bucket is pushed");
        assert!(here.apply_chunk(&chunk).await.unwrap(), "the push was new to the thermostat");
        assert_eq!(here.state().field(&shared, "target_temperature"), Some(&json!(target)));
    }
    let chunks = t.state().chunks;
    let pushed = |key: &str| chunks.iter().filter(|c| c.iter().any(|k| k == key)).count();
    assert_eq!(pushed(&shared), 6, "{chunks:?}");
    assert_eq!(pushed("structure.homeassistant"), 1, "the structure goes out once, not once per node: {chunks:?}");
    assert_eq!(pushed("user.homeassistant"), 1, "{chunks:?}");
}

#[tokio::test]
async fn mqtt_is_published_once_per_change_and_another_node_takes_over_when_the_leader_stops() {
    if skip_without_postgres() {
        return;
    }
    let broker = Broker::rumqttd(None).await;
    let rec = Recorder::connect(broker.port, None).await;
    let port = format!("--mqtt-port={}", broker.port);
    let args = ["--mqtt-host=127.0.0.1", port.as_str()];
    let tmp = tempfile::tempdir().unwrap();
    let a = TestApp::start_in(tmp.path().to_path_buf(), &args).await;
    leads(&a, true).await;
    let b = TestApp::start_in(tmp.path().to_path_buf(), &args).await;
    let t = a.booted(SERIAL).await;
    let target = format!("nolongerevil/{SERIAL}/ha/target_temperature");
    let bridge = "nolongerevil/roost/availability";
    let times = |log: &Log, from: usize, payload: &str| {
        log.messages[from..].iter().filter(|(topic, p)| *topic == target && p == payload).count()
    };

    let from = rec.position();
    assert_eq!(b.command(SERIAL, "set_temperature", json!(23.0)).await.status(), 200);
    rec.wait_payload(&target, "23.0").await;
    // Another change after it, through the other node: once it arrived, so would any repeat.
    t.via(b.device.clone()).set_local("device", json!({"current_humidity": 47})).await.unwrap();
    let log = rec.wait_payload(&format!("nolongerevil/{SERIAL}/device/current_humidity"), "47").await;
    assert_eq!(times(&log, from, "23.0"), 1, "one publish per change, not one per node");
    assert_eq!(stats(&b).await["storage"]["leader"], false, "one leader");

    // The leader stops; the other node takes over and says the bridge is online again.
    let from = rec.position();
    a.stop().await;
    leads(&b, true).await;
    rec.wait_for("the new leader's bridge", |l| l.seen_since(from, bridge, "online")).await;
    let from = rec.position();
    assert_eq!(b.command(SERIAL, "set_temperature", json!(24.0)).await.status(), 200);
    rec.wait_payload(&target, "24.0").await;
    t.via(b.device.clone()).set_local("device", json!({"current_humidity": 48})).await.unwrap();
    let log = rec.wait_payload(&format!("nolongerevil/{SERIAL}/device/current_humidity"), "48").await;
    assert_eq!(times(&log, from, "24.0"), 1);
    assert_eq!(log.latest(bridge), Some("online"));
}

#[tokio::test]
async fn the_device_limit_holds_for_the_cluster_under_a_flood_spread_over_both_nodes() {
    let Some((_tmp, a, b)) = two_nodes(&["--max-devices=3"]).await else { return };
    let flood = (0..20).map(|i| {
        let client = if i % 2 == 0 { a.device.clone() } else { b.device.clone() };
        async move {
            let serial = format!("02AA01AC9{i:07}");
            let req = device_req("POST", "/nest/transport/put", &serial).json(&json!({"objects": []}));
            client.send(&req).await.unwrap().status()
        }
    });
    let statuses = futures_util::future::join_all(flood).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "one limit for both nodes: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 17, "{statuses:?}");
    // Room made on one node is room on the other.
    let owners: Value = b.control.send(&Request::get("/api/registered-devices")).await.unwrap().json().unwrap();
    assert_eq!(owners.as_array().unwrap().len(), 3, "{owners}");
    let admitted = owners[0]["serial"].as_str().unwrap().to_string();
    let r = b.control.send(&Request::new("DELETE", "/api/device").json(&json!({"serial": admitted}))).await.unwrap();
    assert_eq!(r.status(), 200);
    a.booted(SERIAL).await;
}
