use std::process::{Command, Stdio};
use std::time::Duration;

use roost::sim::http::{Client, Request};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_restart_keeps_all_state_and_resends_the_structure_once() {
    let tmp = tempfile::tempdir().unwrap();
    let app = TestApp::start_in(tmp.path().to_path_buf(), &[]).await;
    let t = app.booted(SERIAL).await;
    let (code, _) = t.passphrase().await.unwrap();
    app.command(SERIAL, "set_temperature", json!(22.5)).await;
    let before = app.listing_of(SERIAL).await;
    app.stop().await;

    let app = TestApp::start_in(tmp.path().to_path_buf(), &[]).await;
    let after = app.listing_of(SERIAL).await;
    assert_eq!(before, after);
    let (same_code, _) = app.thermostat(SERIAL).passphrase().await.unwrap();
    assert_eq!(same_code, code, "entry keys survive a restart");

    // The thermostat (already holding everything) gets only the structure, once.
    let t2 = app.thermostat(SERIAL);
    let mut state_body = t.subscribe_body();
    for o in state_body["objects"].as_array_mut().unwrap() {
        let key = o["object_key"].as_str().unwrap().to_string();
        if let Some(b) = after["objects"].as_array().unwrap().iter().find(|x| x["object_key"] == key.as_str()) {
            o["object_timestamp"] = b["object_timestamp"].clone();
            o["object_revision"] = b["object_revision"].clone();
        }
    }
    let (mut conn, _) = open_subscribe(&app.device, SERIAL, state_body.clone()).await;
    let doc = chunk_json(&conn.next_chunk_within(WAIT).await.unwrap().unwrap());
    assert_eq!(keys_of(&doc), vec!["structure.homeassistant".to_string()]);
    let (mut conn, _) = open_subscribe(&app.device, SERIAL, state_body).await;
    assert!(conn.next_chunk_within(Duration::from_millis(300)).await.is_err(), "second subscribe is held");
    drop(t2);
}

/// Starts the real binary, PUTs, kills it with SIGKILL right after the acknowledgement, and
/// checks that a new roost on the same database has the write.
#[tokio::test]
async fn an_acknowledged_put_survives_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("kill.sqlite");
    let device_port = free_port();
    let control_port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_roost"))
        .env("SERVER_HOST", "127.0.0.1")
        .env("SERVER_PORT", device_port.to_string())
        .env("CONTROL_HOST", "127.0.0.1")
        .env("CONTROL_PORT", control_port.to_string())
        .envs(db_env(&db).await)
        .env("RUST_LOG", "warn")
        .current_dir(tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start roost");
    let control = Client::new(&format!("http://127.0.0.1:{control_port}")).unwrap();
    let ready = async {
        loop {
            if let Ok(r) = control.send(&Request::get("/health")).await {
                if r.status() == 200 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), ready).await.expect("roost became healthy");
    let device = Client::new(&format!("http://127.0.0.1:{device_port}")).unwrap();
    let mut receipts = Vec::new();
    for i in 0..20 {
        let body = json!({"objects": [{"object_key": format!("device.{SERIAL}"), "value": {"seq": i}}]});
        receipts.push(put(&device, SERIAL, body).await);
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let app = TestApp::start_in(tmp.path().to_path_buf(), &[&format!("--sqlite3-db-path={}", db.display())]).await;
    let list = app.listing_of(SERIAL).await;
    let last = &receipts.last().unwrap()["objects"][0];
    assert_eq!(list["objects"][0]["object_revision"], last["object_revision"]);
    assert_eq!(list["objects"][0]["object_timestamp"], last["object_timestamp"]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_reference_database_is_adopted_with_its_pairings_and_buckets() {
    if postgres().is_some() {
        println!("skipped on PostgreSQL: reference databases are SQLite files");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("database.sqlite");
    let setup = r#"
CREATE TABLE states (serial VARCHAR NOT NULL, object_key VARCHAR NOT NULL, object_revision INTEGER NOT NULL, object_timestamp INTEGER NOT NULL, value TEXT, "updatedAt" INTEGER NOT NULL, PRIMARY KEY (serial, object_key));
CREATE INDEX idx_states_serial ON states (serial);
CREATE TABLE users ("clerkId" VARCHAR NOT NULL, email VARCHAR NOT NULL, "createdAt" INTEGER NOT NULL, PRIMARY KEY ("clerkId"));
CREATE TABLE "entryKeys" (code VARCHAR NOT NULL, serial VARCHAR NOT NULL, "createdAt" INTEGER NOT NULL, "expiresAt" INTEGER NOT NULL, "claimedBy" VARCHAR, "claimedAt" INTEGER, PRIMARY KEY (code));
CREATE TABLE "deviceOwners" (serial VARCHAR NOT NULL, "userId" VARCHAR NOT NULL, "createdAt" INTEGER NOT NULL, PRIMARY KEY (serial));
CREATE TABLE sessions (serial VARCHAR NOT NULL, session VARCHAR NOT NULL, endpoint VARCHAR NOT NULL, "startedAt" INTEGER NOT NULL, "lastActivity" INTEGER NOT NULL, open INTEGER NOT NULL, client VARCHAR, meta TEXT, PRIMARY KEY (serial, session));
INSERT INTO users VALUES ('homeassistant', 'homeassistant@local', 1795324000000);
INSERT INTO "deviceOwners" VALUES ('02AA01AC12345678', 'homeassistant', 1795324183454);
INSERT INTO "entryKeys" VALUES ('305RGLD', '02AA01AC12345678', 1795324190198, 1795327790198, 'homeassistant', 1795324183439);
INSERT INTO states VALUES ('02AA01AC12345678', 'shared.02AA01AC12345678', 7, 1795324256414, '{"target_temperature": 21.0, "current_temperature": NaN, "name": "Hall"}', 1795324256414);
INSERT INTO states VALUES ('02AA01AC12345678', 'user.homeassistant', 1, 1795324183466, '{"name": "homeassistant"}', 1795324183466);
"#;
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect_with(
            &sqlx::sqlite::SqliteConnectOptions::new().filename(&db).create_if_missing(true),
        )
        .await
        .unwrap();
        sqlx::raw_sql(setup).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }
    let app = TestApp::start_in(
        tmp.path().to_path_buf(),
        &[&format!("--sqlite3-db-path={}", db.display()), "--require-device-pairing=true"],
    )
    .await;
    assert!(tmp.path().join("database.reference-backup.sqlite").exists(), "the old database is backed up first");
    // Paired already: its PUT is accepted (not dropped, not refused).
    let receipt = put(
        &app.device,
        SERIAL,
        json!({"objects": [{"object_key": format!("shared.{SERIAL}"), "value": {"target_temperature": 21.0}}]}),
    )
    .await;
    assert_eq!(receipt["objects"][0]["object_revision"], 7, "same value: same revision");
    assert_eq!(receipt["objects"][0]["object_timestamp"], 1795324256414i64);
    let status = app.device.send(&device_req("GET", "/nest/passphrase/status", SERIAL)).await.unwrap().json().unwrap();
    assert_eq!(status["status"], "claimed");
    let r = app.command(SERIAL, "set_temperature", json!(22)).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn shutdown_ends_held_subscribes_with_the_terminal_chunk() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let (mut conn, _) = t.open_subscribe().await.unwrap();
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(app.stop());
    assert_eq!(conn.next_chunk_within(WAIT).await.unwrap(), None);
    stopping.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(6), "stopped in {:?}", started.elapsed());
}
