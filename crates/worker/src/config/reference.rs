//! The reference of the settings: the rows the table is made of, the defaults other commands
//! read from it, the Markdown table of deploy/docs/configuration.md, and the environment
//! variables that name no setting.

use std::str::FromStr;

use super::table::REFERENCE;

/// One row of the configuration reference.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The group it is listed under in `--help` and the reference.
    pub section: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// The default of the setting `flag` in the table (the text of `--help` and the reference), for
/// the other commands' flags that mean the same thing; a flag not in the table fails the build.
pub const fn default_of(flag: &str) -> &'static str {
    let mut i = 0;
    while i < REFERENCE.len() {
        if const_eq(REFERENCE[i].flag, flag) {
            return REFERENCE[i].default;
        }
        i += 1;
    }
    panic!("no such setting")
}

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A flag's help: its text, then `[env: …]` and `[default: …]` in the order clap gives them for
/// the other commands' flags (clap's own `[env]` is hidden, because the default has to be
/// written here: a setting is an `Option` so that the layers can tell "not given" apart).
pub(super) fn help_text(doc: &str, env: &str, default: &str) -> String {
    let doc = doc.trim();
    if default.is_empty() {
        format!("{doc} [env: {env}]")
    } else {
        format!("{doc} [env: {env}] [default: {default}]")
    }
}

pub(super) fn parse_default<T: FromStr>(flag: &str, s: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("built-in default {s:?} for --{flag} does not parse"))
}

/// Environment variables that start with `OCRFLEET_` but name no setting (a typo, or a name
/// from an older release): the worker warns about each, since it would otherwise ignore them
/// silently.
pub fn unknown_env<I: IntoIterator<Item = (String, String)>>(vars: I) -> Vec<String> {
    vars.into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            k.starts_with("OCRFLEET_")
                && !REFERENCE.iter().any(|r| r.env == k)
                && !OTHER_ENV.contains(&k.as_str())
        })
        .collect()
}

/// `OCRFLEET_*` variables that are not worker settings but are read by the binary itself (the
/// config file's path, the log format) or by other commands.
pub const OTHER_ENV: &[&str] = &["OCRFLEET_CONFIG", "OCRFLEET_LOG_FORMAT"];

/// The reference table in Markdown, as it appears in deploy/docs/configuration.md.
pub fn reference_markdown() -> String {
    let mut s =
        String::from("| flag / TOML key | environment | default | meaning |\n|---|---|---|---|\n");
    let mut section = "";
    for r in REFERENCE {
        if r.section != section {
            section = r.section;
            s.push_str(&format!("| **{section}** | | | |\n"));
        }
        let default = if r.default.is_empty() {
            "—".to_string()
        } else {
            format!("`{}`", r.default)
        };
        s.push_str(&format!(
            "| `--{}` | `{}` | {} | {} |\n",
            r.flag, r.env, default, r.doc
        ));
    }
    s
}
