//! Thermostats on the v3 transport (firmware 4.3.3 and 4.0.6, spec `v3-firmware.md`).

use roost::sim::http::Request;
use serde_json::{Value, json};

use crate::helpers::*;

const URL_KEYS: [&str; 11] = [
    "czfe_url",
    "transport_url",
    "direct_transport_url",
    "passphrase_url",
    "ping_url",
    "pro_info_url",
    "weather_url",
    "upload_url",
    "software_update_url",
    "server_version",
    "tier_name",
];

async fn entry(app: &TestApp, serial: Option<&str>, software_version: &str) -> Value {
    let form =
        format!("reset=FALSE&mac=18B430AABBCC&model=Display-2.14&request_id=1&software_version={software_version}");
    let req = match serial {
        Some(s) => device_req("POST", "/nest/entry", s),
        None => Request::post("/nest/entry"),
    };
    let req = req.header("Content-Type", "application/x-www-form-urlencoded").body(form.into_bytes());
    let r = app.device.send(&req).await.expect("entry");
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

fn member_keys(doc: &Value) -> Vec<&str> {
    doc.as_object().unwrap().keys().map(String::as_str).collect()
}

// spec v3-firmware §7 vector 25
#[tokio::test]
async fn entry_carries_the_pairing_buckets_for_a_paired_4_3_thermostat_only() {
    let app = TestApp::start(&[]).await;
    let unpaired = entry(&app, Some(SERIAL), "4.3.3").await;
    assert_eq!(member_keys(&unpaired), URL_KEYS, "unpaired: the plain body");

    // Booting (and subscribing once) adopts it for the default user, which creates its buckets.
    app.booted(SERIAL).await;
    let doc = entry(&app, Some(SERIAL), "4.3.3").await;
    let mut expected: Vec<&str> = URL_KEYS.to_vec();
    expected.extend(["user.homeassistant", "structure.homeassistant"]);
    assert_eq!(member_keys(&doc), expected);
    let user = &doc["user.homeassistant"];
    assert_eq!(user["value"], json!({"name": "homeassistant"}));
    assert!(user["object_revision"].as_i64().unwrap() >= 1);
    assert!(user["object_timestamp"].as_i64().unwrap() > 0);
    assert_eq!(doc["structure.homeassistant"]["value"]["devices"], json!([format!("device.{SERIAL}")]));

    for other in ["4.0.6", "5.9.4-5"] {
        assert_eq!(member_keys(&entry(&app, Some(SERIAL), other).await), URL_KEYS, "{other}");
    }
    assert_eq!(member_keys(&entry(&app, None, "4.3.3").await), URL_KEYS, "unidentified");
}

#[tokio::test]
async fn a_forced_or_overridden_profile_decides_what_entry_carries() {
    let app = TestApp::start(&["--v3-dialect=4.0", "--v3-dialect-overrides=SIM0000000000001:4.3"]).await;
    app.booted(SERIAL).await;
    app.booted("SIM0000000000001").await;
    assert_eq!(member_keys(&entry(&app, Some(SERIAL), "4.3.3").await), URL_KEYS, "forced 4.0");
    assert!(entry(&app, Some("SIM0000000000001"), "4.0.6").await.get("user.homeassistant").is_some(), "override 4.3");
}

// spec v3-firmware §7 vector 10
#[tokio::test]
async fn buckets_stored_under_corrupted_keys_are_purged_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let app = TestApp::start_in(tmp.path().to_path_buf(), &[]).await;
    app.booted(SERIAL).await;
    app.stop().await;

    let db = tmp.path().join("roost.sqlite");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    for key in [format!("device.{SERIAL} ._sync"), format!("device.{SERIAL} .$version .$version")] {
        sqlx::query(
            "INSERT INTO states (serial, object_key, object_revision, object_timestamp, value, \"updatedAt\") VALUES (?, ?, 1, 1, '{}', 1)",
        )
        .bind(SERIAL)
        .bind(key)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;

    let app = TestApp::start_in(tmp.path().to_path_buf(), &[]).await;
    let keys: Vec<String> = keys_of(&app.listing_of(SERIAL).await);
    assert!(keys.contains(&format!("device.{SERIAL}")), "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains(' ')), "{keys:?}");
    app.stop().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let spaced: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM states WHERE instr(object_key, ' ') > 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(spaced, 0, "removed from storage too");
}
