//! Weather for the thermostat's display: proxied from the Nest weather service (or
//! `WEATHER_UPSTREAM_URL`), cached per location in the `weather` table, and served stale when the
//! upstream is unreachable.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::query_param;
use crate::AppState;
use crate::domain::time::now_ms;
use crate::error::ApiError;
use crate::http_client::{Client, Request};

/// The device gives up on a non-chunked reply after about 7 s.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Locations kept in the cache (a home has one; a stranger inventing postal codes must not grow
/// the table without end). The least recently fetched go first.
const MAX_LOCATIONS: i64 = 500;

/// The location a request asks about, normalised (`07719, us` and `07719,US` are one place):
/// `?query=<zip>,<country>` as the firmware sends it, or the reference's `postal_code` /
/// `country` parameters. Also returns the `query` text as sent, which keys the answer.
fn location(req: &HttpRequest) -> (String, String, Option<String>) {
    match query_param(req, "query") {
        Some(q) => {
            let (postal, country) = q.split_once(',').unwrap_or((q.as_str(), ""));
            (postal_code(postal), country_code(country), Some(q))
        }
        None => (
            query_param(req, "postal_code").map(|p| postal_code(&p)).unwrap_or_default(),
            query_param(req, "country").map(|c| country_code(&c)).unwrap_or_default(),
            None,
        ),
    }
}

/// Upper case letters and digits, single spaces and dashes, at most 12 characters.
fn postal_code(raw: &str) -> String {
    let kept: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == ' ' || *c == '-')
        .collect::<String>()
        .to_ascii_uppercase();
    kept.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(12).collect()
}

fn country_code(raw: &str) -> String {
    raw.chars().filter(char::is_ascii_alphabetic).take(4).collect::<String>().to_ascii_uppercase()
}

/// The cached answer keyed by the query the device sent (the upstream keys it by the query it
/// was asked, the normalised one; the device looks its own up).
fn answer(data: Value, asked: Option<&str>) -> Value {
    match (data, asked) {
        (Value::Object(map), Some(asked)) if map.len() == 1 => {
            let value = map.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Null);
            serde_json::json!({ asked: value })
        }
        (data, _) => data,
    }
}

pub async fn weather(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (postal, country, asked) = location(&req);
    let cache = state.store.weather();
    let cached = cache.get(&postal, &country).await?;
    let cached = cached.and_then(|(at, data)| Some((at, serde_json::from_str::<Value>(&data?).ok()?)));
    if let Some((at, data)) = &cached {
        if now_ms() - at < state.config.weather_cache_ttl_ms as i64 {
            return Ok(HttpResponse::Ok().json(answer(data.clone(), asked.as_deref())));
        }
    }
    // Only the normalised location goes upstream, never whatever else the query string held.
    let upstream_query = match (postal.is_empty(), country.is_empty()) {
        (true, true) if asked.is_none() => String::new(),
        (_, true) => format!("query={}", encode(&postal)),
        _ => format!("query={},{}", encode(&postal), encode(&country)),
    };
    match fetch(&state.config.weather_upstream_url, &upstream_query).await {
        Ok(data) => {
            cache.put(&postal, &country, &data.to_string(), MAX_LOCATIONS).await?;
            Ok(HttpResponse::Ok().json(answer(data, asked.as_deref())))
        }
        Err(e) => {
            tracing::warn!(error = %e, postal = %postal, "weather upstream unavailable");
            match cached {
                Some((_, stale)) => Ok(HttpResponse::Ok().json(answer(stale, asked.as_deref()))),
                None => Err(ApiError::new(StatusCode::BAD_GATEWAY, "Weather service unavailable")),
            }
        }
    }
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn fetch(upstream: &str, query: &str) -> std::io::Result<Value> {
    let (origin, path) = split_url(upstream);
    // The Nest weather service presents a certificate from Nest's private CA, which no public
    // trust store holds; the data is display-only, so the connection is encrypted but not verified.
    let client = Client::for_url(origin, crate::http_client::trust_any_server)?;
    let target = if query.is_empty() { path.to_string() } else { format!("{path}?{query}") };
    let request = Request::get(&target).header("Accept", "application/json").header("Connection", "close");
    let response = tokio::time::timeout(UPSTREAM_TIMEOUT, client.send(&request))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "weather upstream timed out"))??;
    if response.status() != 200 {
        return Err(std::io::Error::other(format!("weather upstream answered {}", response.status())));
    }
    response.json()
}

/// `https://host:port/path` → (`https://host:port`, `/path`).
fn split_url(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url.split_at(after_scheme + i),
        None => (url, "/"),
    }
}

#[cfg(test)]
mod tests {
    use super::{answer, country_code, postal_code, split_url};
    use serde_json::json;

    #[test]
    fn locations_are_normalised() {
        assert_eq!(postal_code(" 07719 "), "07719");
        assert_eq!(postal_code("sw1a   1aa"), "SW1A 1AA");
        assert_eq!(postal_code("<script>0771999999999999"), "SCRIPT077199");
        assert_eq!(country_code(" us"), "US");
        assert_eq!(country_code("u.s.!"), "US");
    }

    #[test]
    fn the_answer_is_keyed_by_what_the_device_asked() {
        let cached = json!({"07719,US": {"current": {"temp_c": 10.6}}});
        assert_eq!(answer(cached.clone(), Some("07719,us")), json!({"07719,us": {"current": {"temp_c": 10.6}}}));
        assert_eq!(answer(cached.clone(), None), cached);
        let odd = json!({"a": 1, "b": 2});
        assert_eq!(answer(odd.clone(), Some("x")), odd);
    }

    #[test]
    fn urls_split_into_origin_and_path() {
        assert_eq!(split_url("https://weather.nest.com/weather/v1"), ("https://weather.nest.com", "/weather/v1"));
        assert_eq!(split_url("http://127.0.0.1:9/"), ("http://127.0.0.1:9", "/"));
        assert_eq!(split_url("http://127.0.0.1:9"), ("http://127.0.0.1:9", "/"));
    }
}
