//! The status page at `/`: jobs, recent runs, failures, alerts and workers on one screen, for a
//! person rather than a program. Rendered on the server from the same read models as the API
//! (it works without JavaScript) and refreshed by the browser every few seconds.

use std::fmt::Write as _;

use axum::extract::State;
use axum::response::Html;
use kairos_core::job::ScheduleSpec;
use kairos_core::run::{RunState, RunStatus};

use super::{scanning, ApiError, ApiState};
use crate::read_model::{self as model, JobRecord, RunIndex};

/// Jobs listed on the page; the rest are counted.
const MAX_JOBS: usize = 200;
const RECENT_RUNS: usize = 25;
/// How far back (in runs) failures are looked for, and how many are shown.
const FAILURE_WINDOW: usize = 1000;
const MAX_FAILURES: usize = 15;
const REFRESH_SECONDS: u32 = 5;

pub(crate) async fn page(State(state): State<ApiState>) -> Result<Html<String>, ApiError> {
    Ok(Html(scanning(&state, render).await?))
}

/// The page, from the store's scans (on the blocking pool).
fn render(state: &ApiState) -> Result<String, ApiError> {
    let now = chrono::Utc::now();
    let jobs = model::jobs(&state.store)?;
    let recent = RunIndex::All.newest(&state.store, FAILURE_WINDOW)?;
    let failures: Vec<&RunState> = recent
        .iter()
        .filter(|r| is_failure(r.status))
        .take(MAX_FAILURES)
        .collect();
    let workers = state.workers.view(now);
    let alerts = state.alerts.recent();

    let mut html = String::new();
    let caught_up = state.health.caught_up();
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Kairos status</title>
<style>{STYLE}</style></head>
<body>
<header><h1>Kairos</h1>
<span class="pill {state_class}" id="sync">{state_text}</span>
<span class="muted">{jobs} jobs · {live} of {workers} workers live · {failing} recent failures · updated {now}</span></header>
"#,
        state_class = if caught_up { "ok" } else { "warn" },
        state_text = if caught_up {
            "caught up"
        } else {
            "catching up"
        },
        jobs = jobs.len(),
        live = workers.iter().filter(|w| w.status == "live").count(),
        workers = workers.len(),
        failing = failures.len(),
        now = now.format("%Y-%m-%d %H:%M:%S UTC"),
    );

    section(
        &mut html,
        "jobs",
        "Jobs",
        &[
            "Job",
            "Schedule",
            "Pool",
            "Last run",
            "Failures in a row",
            "Next fire",
            "Changed by",
        ],
    );
    for (_, job) in jobs.iter().take(MAX_JOBS) {
        let definition = &job.definition;
        let id = definition.id.as_str();
        let stats = model::job_stats(&state.store, id)?;
        let last = model::runs_of_job(&state.store, id, 1)?.into_iter().next();
        let next = if definition.paused {
            "paused".to_string()
        } else {
            definition
                .upcoming(now, 1, stats.scheduled)
                .first()
                .map_or_else(
                    || "—".to_string(),
                    |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
                )
        };
        // What was written, then what it means: `0 12 * * 1-5 — At 12:00, on Monday, ...`.
        let schedule = format!(
            "{} — {}",
            ScheduleSpec::of(&definition.schedule),
            definition.describe_schedule()
        );
        row(
            &mut html,
            &[
                Cell::text(id),
                Cell::text(&schedule),
                Cell::text(&definition.pool),
                last.as_ref()
                    .map_or(Cell::text("—"), |r| Cell::status(r.status)),
                Cell::text(&stats.failures_in_a_row.to_string()),
                Cell::text(&next),
                Cell::text(&changed_by(job)),
            ],
        );
    }
    end_section(
        &mut html,
        jobs.len().saturating_sub(MAX_JOBS),
        "more jobs: GET /api/v1/jobs",
    );

    section(
        &mut html,
        "failures",
        "Failures",
        &["Job", "Run", "Slot", "Status", "Attempt", "Error"],
    );
    for run in &failures {
        run_row(&mut html, run, true);
    }
    end_section(&mut html, 0, "");

    section(
        &mut html,
        "runs",
        "Recent runs",
        &["Job", "Run", "Slot", "Status", "Attempt", "Worker"],
    );
    for run in recent.iter().take(RECENT_RUNS) {
        run_row(&mut html, run, false);
    }
    end_section(&mut html, 0, "");

    section(
        &mut html,
        "workers",
        "Workers",
        &["Worker", "Pool", "Status", "Running", "Last seen"],
    );
    for worker in &workers {
        row(
            &mut html,
            &[
                Cell::text(&worker.worker_id),
                Cell::text(&worker.pool),
                Cell::class(
                    &worker.status,
                    if worker.status == "live" { "ok" } else { "bad" },
                ),
                Cell::text(&format!("{}/{}", worker.in_flight.len(), worker.capacity)),
                Cell::text(&worker.last_seen.format("%H:%M:%S").to_string()),
            ],
        );
    }
    end_section(&mut html, 0, "");

    section(
        &mut html,
        "alerts",
        "Alerts",
        &["When", "Kind", "About", "Message"],
    );
    for alert in alerts.iter().take(MAX_FAILURES) {
        let about = [&alert.job_id, &alert.worker_id, &alert.pool]
            .into_iter()
            .find_map(|about| about.as_deref())
            .unwrap_or("");
        row(
            &mut html,
            &[
                Cell::text(&alert.at.format("%Y-%m-%d %H:%M:%S").to_string()),
                Cell::class(&alert.kind, "bad"),
                Cell::text(about),
                Cell::text(&alert.message),
            ],
        );
    }
    end_section(&mut html, 0, "");
    html.push_str("<footer>API: <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a></footer></body></html>\n");
    Ok(html)
}

fn is_failure(status: RunStatus) -> bool {
    matches!(
        status,
        RunStatus::Failed | RunStatus::TimedOut | RunStatus::Lost | RunStatus::Abandoned
    )
}

fn run_row(html: &mut String, run: &RunState, with_error: bool) {
    let last = if with_error {
        Cell::text(run.error.as_deref().unwrap_or("—"))
    } else {
        Cell::text(run.worker_id.as_deref().unwrap_or("—"))
    };
    row(
        html,
        &[
            Cell::text(run.job_id.as_str()),
            Cell::link(
                &run.run_id.to_string()[..8],
                &format!("/api/v1/runs/{}", run.run_id),
            ),
            Cell::text(&run.scheduled_for.format("%Y-%m-%d %H:%M:%S").to_string()),
            Cell::status(run.status),
            Cell::text(&run.attempt.to_string()),
            last,
        ],
    );
}

/// One table cell: escaped text, an optional CSS class, an optional link.
struct Cell {
    text: String,
    class: Option<&'static str>,
    href: Option<String>,
}

impl Cell {
    fn text(text: &str) -> Self {
        Cell {
            text: text.to_string(),
            class: None,
            href: None,
        }
    }
    fn class(text: &str, class: &'static str) -> Self {
        Cell {
            class: Some(class),
            ..Cell::text(text)
        }
    }
    fn status(status: RunStatus) -> Self {
        let class = match status {
            RunStatus::Succeeded => "ok",
            s if is_failure(s) => "bad",
            RunStatus::Skipped | RunStatus::Cancelled => "muted",
            _ => "warn",
        };
        Cell::class(status.as_str(), class)
    }
    fn link(text: &str, href: &str) -> Self {
        Cell {
            href: Some(href.to_string()),
            ..Cell::text(text)
        }
    }
}

fn section(html: &mut String, id: &str, title: &str, headers: &[&str]) {
    let _ = write!(
        html,
        "<section id=\"{id}\"><h2>{title}</h2><table><thead><tr>"
    );
    for header in headers {
        let _ = write!(html, "<th>{}</th>", escape(header));
    }
    html.push_str("</tr></thead><tbody>\n");
}

fn row(html: &mut String, cells: &[Cell]) {
    html.push_str("<tr>");
    for cell in cells {
        let text = escape(&cell.text);
        let inner = match &cell.href {
            Some(href) => format!("<a href=\"{}\">{text}</a>", escape(href)),
            None => text,
        };
        match cell.class {
            Some(class) => {
                let _ = write!(html, "<td><span class=\"pill {class}\">{inner}</span></td>");
            }
            None => {
                let _ = write!(html, "<td>{inner}</td>");
            }
        }
    }
    html.push_str("</tr>\n");
}

fn end_section(html: &mut String, hidden: usize, where_: &str) {
    html.push_str("</tbody></table>");
    if hidden > 0 {
        let _ = write!(html, "<p class=\"muted\">{hidden} {}</p>", escape(where_));
    }
    html.push_str("</section>\n");
}

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Who wrote the job's current definition, and when.
fn changed_by(job: &JobRecord) -> String {
    let author = job.author.as_deref().unwrap_or("unknown");
    match job.updated_at {
        Some(at) => format!("{author}, {}", at.format("%Y-%m-%d %H:%M")),
        None => author.to_string(),
    }
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{display:flex;gap:1em;align-items:center;padding:.8em 1.5em;background:#1d2330;color:#fff}
header h1{font-size:1.2em;margin:0}header .muted{color:#b8bfcc}
section{margin:1em 1.5em;background:#fff;border-radius:6px;box-shadow:0 1px 2px #0002;padding:.5em 1em}
h2{font-size:1em;margin:.4em 0}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #eceef2}
th{font-weight:600;color:#5b6475}td a{color:#2456c7}
.pill{display:inline-block;border-radius:1em;padding:0 .6em;font-size:.9em}
.ok{background:#dff5e3;color:#17672a}.bad{background:#fde2e1;color:#a11a12}.warn{background:#fff1d6;color:#8a5a00}
.muted{color:#7a8394}footer{margin:1em 1.5em;color:#7a8394}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_ledger_cannot_inject_markup() {
        let mut html = String::new();
        row(
            &mut html,
            &[
                Cell::text("<script>alert('x')</script>"),
                Cell::link("a", "/x\"onclick=\"y"),
            ],
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("href=\"/x&quot;onclick=&quot;y\""), "{html}");
    }
}
