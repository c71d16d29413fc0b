//! The web UI: one page and its two assets, embedded in the binary (no external requests).

use actix_web::{HttpRequest, HttpResponse};

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const ADMIN_JS: &str = include_str!("ui/admin.js");
const STYLE: &str = include_str!("ui/style.css");

fn escape_attribute(raw: &str) -> String {
    raw.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// The page. Behind Home Assistant ingress, `X-Ingress-Path` is the prefix API calls need.
pub async fn index(req: HttpRequest) -> HttpResponse {
    let ingress = req.headers().get("x-ingress-path").and_then(|v| v.to_str().ok()).unwrap_or("");
    let page = INDEX.replacen("<body>", &format!("<body data-ingress-path=\"{}\">", escape_attribute(ingress)), 1);
    HttpResponse::Ok().content_type("text/html; charset=utf-8").insert_header(("Cache-Control", "no-cache")).body(page)
}

pub async fn app_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(APP_JS)
}

/// Access mode, API keys and thermostat setup (scan and configure).
pub async fn admin_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(ADMIN_JS)
}

pub async fn style() -> HttpResponse {
    HttpResponse::Ok().content_type("text/css; charset=utf-8").insert_header(("Cache-Control", "no-cache")).body(STYLE)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ingress_paths_are_escaped() {
        assert_eq!(super::escape_attribute("/a\"><script>"), "/a&quot;&gt;&lt;script&gt;");
    }
}
