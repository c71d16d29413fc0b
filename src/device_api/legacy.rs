//! Older firmware calls paths without the `/nest` prefix. They are rewritten before routing, so
//! the pairing gate and everything else apply to them exactly as to the modern paths.

use actix_web::dev::ServiceRequest;
use actix_web::http::Uri;

/// The `/nest/...` path for a legacy path, or `None` if the path is not a legacy one.
pub fn legacy_target(path: &str) -> Option<String> {
    if path.starts_with("/nest/") {
        return None;
    }
    let exact = |p: &str| path == p || path == format!("{p}/");
    for (legacy, modern) in [
        ("/entry", "/nest/entry"),
        ("/ping", "/nest/ping"),
        ("/passphrase", "/nest/passphrase"),
        ("/upload", "/nest/upload"),
    ] {
        if exact(legacy) {
            return Some(modern.to_string());
        }
    }
    for (prefix, modern) in
        [("/czfe/", "/nest/transport/"), ("/weather/", "/nest/weather/"), ("/pro_info/", "/nest/pro_info/")]
    {
        if let Some(rest) = path.strip_prefix(prefix) {
            return Some(format!("{modern}{rest}"));
        }
    }
    if path == "/transport" {
        return Some("/nest/transport".into());
    }
    path.strip_prefix("/transport/").map(|rest| format!("/nest/transport/{rest}"))
}

pub fn rewrite_legacy_path(req: &mut ServiceRequest) {
    let Some(target) = legacy_target(req.path()) else { return };
    let with_query = match req.query_string() {
        "" => target,
        q => format!("{target}?{q}"),
    };
    if let Ok(uri) = with_query.parse::<Uri>() {
        req.match_info_mut().get_mut().update(&uri);
        req.head_mut().uri = uri;
    }
}

#[cfg(test)]
mod tests {
    use super::legacy_target;

    #[test]
    fn legacy_paths_map_to_nest_paths() {
        assert_eq!(legacy_target("/nest/entry"), None);
        assert_eq!(legacy_target("/entry/").as_deref(), Some("/nest/entry"));
        assert_eq!(legacy_target("/ping").as_deref(), Some("/nest/ping"));
        assert_eq!(legacy_target("/passphrase/").as_deref(), Some("/nest/passphrase"));
        assert_eq!(legacy_target("/czfe/v5/subscribe").as_deref(), Some("/nest/transport/v5/subscribe"));
        assert_eq!(legacy_target("/transport/v5/put").as_deref(), Some("/nest/transport/v5/put"));
        assert_eq!(legacy_target("/transport").as_deref(), Some("/nest/transport"));
        assert_eq!(legacy_target("/weather/v1").as_deref(), Some("/nest/weather/v1"));
        assert_eq!(legacy_target("/upload").as_deref(), Some("/nest/upload"));
        assert_eq!(legacy_target("/pro_info/device123").as_deref(), Some("/nest/pro_info/device123"));
        assert_eq!(legacy_target("/passphrase/status"), None);
        for p in ["/", "/health", "/api/v1/status", "/control/status"] {
            assert_eq!(legacy_target(p), None, "{p}");
        }
    }
}
