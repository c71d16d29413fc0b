//! `GET /api/history` (JSON) and `GET /api/history/chart.svg` (the chart the web UI shows,
//! drawn on the server with plotters).

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use plotters::prelude::*;
use serde_json::json;
use tokio::sync::Semaphore;

use super::status::parse_serial;
use crate::AppState;
use crate::device_api::query_param;
use crate::domain::time::now_ms;
use crate::error::ApiError;
use crate::history::{Point, TEMPERATURES_C, points};

const DAY_MS: i64 = 86_400_000;
/// Longest a chart may take, waiting for its turn included. Drawing runs off the request
/// workers, so even a chart that overran would not stop the port answering.
const CHART_BUDGET: Duration = Duration::from_secs(3);
/// Charts drawn at once (the web UI asks for one per thermostat card).
static DRAWING: Semaphore = Semaphore::const_new(2);

fn known(state: &AppState, serial: &str) -> Result<(), ApiError> {
    if state.store.exists(serial) || state.pairing.owner(serial).is_some() {
        Ok(())
    } else {
        Err(ApiError::not_found("Device not found"))
    }
}

/// `since` as milliseconds since the epoch, or relative (`24h`, `7d`, `90m`); default 24 hours.
fn parse_since(raw: Option<&str>) -> Result<i64, ApiError> {
    let now = now_ms();
    let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else { return Ok(now - DAY_MS) };
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(ms);
    }
    let relative = [("m", 60_000), ("h", 3_600_000), ("d", DAY_MS)].into_iter().find_map(|(unit, factor)| {
        let n = raw.strip_suffix(unit)?.parse::<i64>().ok().filter(|n| *n > 0)?;
        now.checked_sub(n.checked_mul(factor)?)
    });
    relative.ok_or_else(|| {
        ApiError::bad_request(format!("since '{raw}' must be milliseconds since 1970 or like 24h, 7d, 90m"))
    })
}

pub async fn history(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let serial = parse_serial(query_param(&req, "serial").as_deref())?;
    super::access::grant(&req).check_device(&serial)?;
    known(&state, &serial)?;
    let since = parse_since(query_param(&req, "since").as_deref())?;
    let points = state.store.history().points(&serial, since).await?;
    Ok(HttpResponse::Ok().json(json!({"serial": serial, "since": since, "points": points})))
}

pub async fn chart(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let serial = parse_serial(query_param(&req, "serial").as_deref())?;
    super::access::grant(&req).check_device(&serial)?;
    known(&state, &serial)?;
    let range = query_param(&req, "range").unwrap_or_else(|| "24h".into());
    let span = match range.as_str() {
        "24h" => DAY_MS,
        "7d" => 7 * DAY_MS,
        other => return Err(ApiError::bad_request(format!("range '{other}' must be 24h or 7d"))),
    };
    let deadline = Instant::now() + CHART_BUDGET;
    let now = now_ms();
    let points = points(&state.store, &serial, now - span).await?;
    let over_budget = || ApiError::unavailable("The chart could not be drawn in time; try again");
    let permit = tokio::time::timeout_at(deadline.into(), DRAWING.acquire())
        .await
        .map_err(|_| over_budget())?
        .map_err(|_| over_budget())?;
    let drawing = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        render(&points, now, span, deadline)
    });
    let svg = match tokio::time::timeout_at(deadline.into(), drawing).await {
        Ok(Ok(Ok(svg))) => svg,
        Ok(Ok(Err(ChartError::OverBudget))) | Err(_) => return Err(over_budget()),
        Ok(Ok(Err(ChartError::Drawing(e)))) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Ok(Err(e)) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("Drawing failed: {e}"))),
    };
    Ok(HttpResponse::Ok().content_type("image/svg+xml").insert_header(("Cache-Control", "no-store")).body(svg))
}

/// Hours before `now` (negative) for a timestamp.
fn hours(at: i64, now: i64) -> f64 {
    (at - now) as f64 / 3_600_000.0
}

/// The chart: the measured temperature, the setpoint(s) as steps, and bands where the heating
/// (red) or cooling (blue) ran. Stops with [`ChartError::OverBudget`] once `deadline` passes.
pub fn render(points: &[Point], now: i64, span: i64, deadline: Instant) -> Result<String, ChartError> {
    let in_time = || if Instant::now() < deadline { Ok(()) } else { Err(ChartError::OverBudget) };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 260)).into_drawing_area();
        let temps = points.iter().flat_map(|p| {
            [p.current_temperature, p.target_temperature, p.target_temperature_low, p.target_temperature_high]
                .into_iter()
                .flatten()
        });
        let (lo, hi) = temps.fold((f64::MAX, f64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
        // Points hold only plausible readings, so the axis stays small enough to draw.
        let (lo, hi) = if lo > hi { (15.0, 25.0) } else { ((lo - 1.0).floor(), (hi + 1.0).ceil()) };
        let (lo, hi) = (lo.max(*TEMPERATURES_C.start() - 1.0), hi.min(*TEMPERATURES_C.end() + 1.0));
        let left = -(span as f64) / 3_600_000.0;
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(26)
            .y_label_area_size(34)
            .build_cartesian_2d(left..0.0, lo..hi)
            .map_err(drawing)?;
        let grey = RGBColor(128, 128, 128);
        chart
            .configure_mesh()
            .light_line_style(grey.mix(0.15))
            .bold_line_style(grey.mix(0.3))
            .axis_style(grey)
            .label_style(("sans-serif", 12).into_font().color(&grey))
            .x_desc("hours")
            .y_desc("°C")
            .draw()
            .map_err(drawing)?;
        in_time()?;
        // Bands from each sample to the next (or to now) while heating or cooling ran.
        let ends = points.iter().skip(1).map(|p| p.at).chain(std::iter::once(now));
        let bands: Vec<(f64, f64, RGBAColor)> = points
            .iter()
            .zip(ends)
            .filter_map(|(p, end)| {
                let colour = if p.heating {
                    RGBColor(230, 90, 40).mix(0.25)
                } else if p.cooling {
                    RGBColor(40, 120, 230).mix(0.25)
                } else {
                    return None;
                };
                Some((hours(p.at, now).max(left), hours(end, now), colour))
            })
            .collect();
        in_time()?;
        chart
            .draw_series(bands.iter().map(|(x0, x1, c)| Rectangle::new([(*x0, lo), (*x1, hi)], c.filled())))
            .map_err(drawing)?;
        let steps = |get: fn(&Point) -> Option<f64>| -> Vec<(f64, f64)> {
            let mut out: Vec<(f64, f64)> = Vec::new();
            for p in points {
                if let Some(v) = get(p) {
                    let x = hours(p.at, now).max(left);
                    if let Some(&(_, prev)) = out.last() {
                        out.push((x, prev));
                    }
                    out.push((x, v));
                }
            }
            if let Some(&(_, v)) = out.last() {
                out.push((0.0, v));
            }
            out
        };
        let setpoint = RGBColor(240, 160, 20);
        for get in [
            (|p: &Point| p.target_temperature) as fn(&Point) -> Option<f64>,
            |p: &Point| p.target_temperature_low,
            |p: &Point| p.target_temperature_high,
        ] {
            chart.draw_series(LineSeries::new(steps(get), setpoint.stroke_width(2))).map_err(drawing)?;
            in_time()?;
        }
        let measured: Vec<(f64, f64)> =
            points.iter().filter_map(|p| p.current_temperature.map(|t| (hours(p.at, now).max(left), t))).collect();
        chart.draw_series(LineSeries::new(measured, RGBColor(30, 160, 110).stroke_width(2))).map_err(drawing)?;
        if points.is_empty() {
            root.draw(&Text::new("No history recorded yet", (280, 120), ("sans-serif", 14).into_font().color(&grey)))
                .map_err(drawing)?;
        }
        root.present().map_err(drawing)?;
    }
    in_time()?;
    Ok(svg)
}

#[derive(Debug, PartialEq)]
pub enum ChartError {
    OverBudget,
    Drawing(String),
}

fn drawing(e: impl std::fmt::Display) -> ChartError {
    ChartError::Drawing(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_draw_lines_and_heating_bands() {
        let p = |at: i64, t: f64, heating: bool| Point {
            at,
            current_temperature: Some(t),
            target_temperature: Some(21.0),
            target_temperature_low: None,
            target_temperature_high: None,
            humidity: None,
            mode: Some("heat".into()),
            heating,
            cooling: false,
            fan: false,
            aux: false,
        };
        let now = 10 * 3_600_000;
        let later = Instant::now() + Duration::from_secs(60);
        let svg =
            render(&[p(now - 7_200_000, 19.0, true), p(now - 3_600_000, 20.5, false)], now, DAY_MS, later).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("<polyline"), "lines are drawn");
        assert!(svg.contains("<rect"), "a heating band is drawn");
        let empty = render(&[], now, DAY_MS, later).unwrap();
        assert!(empty.contains("No history recorded yet"));
        assert_eq!(render(&[], now, DAY_MS, Instant::now()).unwrap_err(), ChartError::OverBudget);
    }

    #[test]
    fn since_is_absolute_or_relative() {
        assert_eq!(parse_since(Some("1000")).unwrap(), 1000);
        let now = now_ms();
        let d = parse_since(Some("7d")).unwrap();
        assert!((now - 7 * DAY_MS - d).abs() < 5000);
        assert!(parse_since(Some("soon")).is_err());
        assert!(parse_since(Some("5é")).is_err(), "no panic on a multi-byte suffix");
        assert!(parse_since(Some("99999999999999999d")).is_err(), "no overflow");
    }
}
