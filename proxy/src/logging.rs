//! Structured logs through `tracing`, text or JSON, with a filter that can change at run time
//! (`PUT /log-level`) and an optional access log.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use weft_api::LogFormat;

/// Whether one line per request is logged (checked per request: one relaxed load).
pub static ACCESS_LOG: AtomicBool = AtomicBool::new(false);

/// Whether access log lines are written (`log.accessLog`).
pub fn access_log_enabled() -> bool {
    ACCESS_LOG.load(Ordering::Relaxed)
}

/// Changes the active log filter, and says which one is active.
pub struct LogHandle {
    reload: reload::Handle<Targets, tracing_subscriber::Registry>,
    /// The filter as the operator wrote it (without the access target `with_access` adds).
    current: Mutex<String>,
}

impl LogHandle {
    /// Changes the log filter at run time (`POST /log-level`).
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let filter = filter.trim();
        let targets = parse_filter(filter)?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        self.reload.reload(with_access(targets)).map_err(|e| e.to_string())?;
        *current = filter.to_string();
        Ok(())
    }

    /// The filter in effect.
    pub fn current(&self) -> String {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A filter such as `info` or `weft_proxy=debug,info`. An empty one is refused: it would turn
/// every log line off, which is never what a typo meant.
fn parse_filter(filter: &str) -> Result<Targets, String> {
    if filter.is_empty() {
        return Err("empty log filter: give a level such as info, or a filter such as weft_proxy=debug,info".into());
    }
    filter.parse().map_err(|e| format!("invalid log filter {filter:?}: {e}"))
}

/// The filter in a `PUT /log-level` body: the filter itself (`debug`,
/// `weft_proxy=debug,info`), or JSON, `{"level": "debug"}` or a JSON string.
pub fn filter_from_body(body: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the log filter is not UTF-8".to_string())?.trim();
    let filter = match text.as_bytes().first() {
        Some(b'{') => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                level: String,
            }
            serde_json::from_str::<Body>(text)
                .map_err(|e| format!("a JSON body must be {{\"level\": \"<filter>\"}}: {e}"))?
                .level
        }
        Some(b'"') => serde_json::from_str::<String>(text).map_err(|e| format!("invalid JSON string: {e}"))?,
        _ => text.to_string(),
    };
    let filter = filter.trim();
    parse_filter(filter)?;
    Ok(filter.to_string())
}

/// Installs the global subscriber. `level` is a filter such as `info` or `weft_proxy=debug,info`.
pub fn init(format: LogFormat, level: &str) -> Result<LogHandle, String> {
    let targets: Targets = level.parse().map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    let (filter, reload) = reload::Layer::new(with_access(targets));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_current_span(false))
            .try_init(),
        LogFormat::Text => {
            registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false)).try_init()
        }
    };
    result.map_err(|e| e.to_string())?;
    Ok(LogHandle { reload, current: Mutex::new(level.trim().to_string()) })
}

/// Lets access lines through whatever the level: `accessLog: true` with `level: warn` must
/// still log each request. The lines are only emitted while the access log is on, so this
/// costs nothing when it is off; a filter that names `access` itself (`access=off`) wins.
fn with_access(targets: Targets) -> Targets {
    if targets.iter().any(|(target, _)| target == "access") {
        targets
    } else {
        targets.with_target("access", tracing::Level::INFO)
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::filter::Targets;

    use super::{filter_from_body, with_access};

    #[test]
    fn access_lines_pass_any_level_unless_the_filter_names_them() {
        let warn = with_access("warn".parse::<Targets>().unwrap());
        assert!(warn.would_enable("access", &Level::INFO));
        assert!(!warn.would_enable("weft_proxy::forward", &Level::INFO));
        let off = with_access("warn,access=off".parse::<Targets>().unwrap());
        assert!(!off.would_enable("access", &Level::INFO));
    }

    /// `weft check` validates `spec.log.level` without tracing; it must accept exactly the
    /// filters this parser accepts, or a checked file could still fail to start.
    #[test]
    fn weft_check_accepts_the_log_filters_the_proxy_parses() {
        let cases = [
            "info",
            "WARN",
            "weft_proxy=debug,warn",
            "weft",
            "3",
            "info,",
            "a[{x,y}]=trace",
            "weft=loud",
            "a=b=c",
            "a[{x=info",
            "a[{x}][{y}]=info",
            "a=7",
            "=info",
        ];
        for level in cases {
            let proxy = level.parse::<Targets>().is_ok();
            let check = weft_api::validate::check_log_level(level).is_ok();
            assert_eq!(check, proxy, "{level:?}: weft check says {check}, the proxy {proxy}");
        }
    }

    #[test]
    fn a_log_level_body_is_a_filter_or_json() {
        for (body, want) in [
            ("debug", "debug"),
            (" weft_proxy=debug,info\n", "weft_proxy=debug,info"),
            (r#"{"level":"info"}"#, "info"),
            (r#"{ "level": "weft_proxy=trace,warn" }"#, "weft_proxy=trace,warn"),
            (r#""warn""#, "warn"),
        ] {
            assert_eq!(filter_from_body(body.as_bytes()).as_deref(), Ok(want), "{body}");
        }
        for body in [
            "",
            "   ",
            "weft_proxy=notalevel",
            r#"{"level":"weft_proxy=notalevel"}"#,
            r#"{"lvl":"info"}"#,
            r#"{"level":"info""#,
            r#"{"level":""}"#,
        ] {
            assert!(filter_from_body(body.as_bytes()).is_err(), "{body:?} must be refused");
        }
        assert!(filter_from_body(b"\xff").is_err());
    }
}
