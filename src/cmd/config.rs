//! Configuration files: `/etc/securexfer/serve.toml` for `serve`, and
//! `$XDG_CONFIG_HOME/securexfer/config.toml` (`~/.config/securexfer/config.toml`) for
//! `register` and `send`; `--config PATH` or `SECUREXFER_CONFIG` names another.
//!
//! A file holds `key = value` lines whose keys are the command's long flags (`max-file-size
//! = "8G"`, `strict-sessions = true`, `compat = ["crc32-ciphertext"]`). Precedence is flags,
//! then `SECUREXFER_*` variables, then the file, then the defaults: a setting from the
//! file is applied only where clap would otherwise use the default. The file's values go
//! through the same parsing as flags, so a bad value fails just like a bad flag. An unknown
//! key is an error naming the file and the line.

use super::UsageError;
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The server's configuration file when `--config` and `SECUREXFER_CONFIG` are absent.
pub const SERVE_CONFIG: &str = "/etc/securexfer/serve.toml";
/// The client's, relative to the home directory (see `client::home`).
pub const CLIENT_CONFIG: &str = "config.toml";

/// `argv` with the settings of the subcommand's configuration file added where neither a
/// flag nor a variable set them. `argv` is returned unchanged for commands without one.
pub fn with_file_settings(cli: &Command, argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Ok(matches) = cli.clone().try_get_matches_from(&argv) else {
        // clap reports usage errors itself when the real parse runs.
        return Ok(argv);
    };
    let Some((name, sub)) = matches.subcommand() else { return Ok(argv) };
    let Some(path) = config_path(name, sub) else { return Ok(argv) };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named(sub) => return Ok(argv),
        Err(e) => anyhow::bail!(UsageError(format!("{}: {e}", path.display()))),
    };
    // Built, so that every argument knows whether it takes a value.
    let mut built = cli.clone();
    built.build();
    let command = built.find_subcommand(name).expect("a parsed subcommand exists");
    let extra = settings(&path, &text, command, sub)?;
    // The settings go right after the subcommand's name, before its own arguments.
    let at = argv.iter().position(|a| a == name).map_or(argv.len(), |i| i + 1);
    let mut out = argv;
    out.splice(at..at, extra);
    Ok(out)
}

/// Whether the file was asked for (then it must exist).
fn named(sub: &ArgMatches) -> bool {
    matches!(sub.value_source("config"), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

fn config_path(name: &str, sub: &ArgMatches) -> Option<PathBuf> {
    let given = sub.try_get_one::<PathBuf>("config").ok().flatten().cloned();
    match name {
        "serve" => Some(given.unwrap_or_else(|| PathBuf::from(SERVE_CONFIG))),
        "send" | "register" | "ls" | "get" | "rm" => given.or_else(|| {
            securexfer::client::home::Home::from_env().map(|h| h.root().join(CLIENT_CONFIG))
        }),
        _ => None,
    }
}

/// The file's settings as flags, for the arguments still at their defaults.
fn settings(
    path: &Path,
    text: &str,
    command: &Command,
    sub: &ArgMatches,
) -> anyhow::Result<Vec<OsString>> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| UsageError(format!("{}: {}", path.display(), e)))?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let at =
            |why: String| UsageError(format!("{}:{}: {why}", path.display(), line_of(text, key)));
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| {
                at(format!(
                    "unknown setting {key:?}: the settings are the long flags of `securexfer {}`",
                    command.get_name()
                ))
            })?;
        let id = arg.get_id().as_str();
        if !matches!(sub.value_source(id), None | Some(ValueSource::DefaultValue)) {
            continue; // a flag or a variable set it
        }
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
        match value {
            toml::Value::Boolean(true) if !takes_value => flags.push(format!("--{long}").into()),
            toml::Value::Boolean(false) if !takes_value => {}
            toml::Value::Array(items) if takes_value => {
                for item in items {
                    flags.push(format!("--{long}={}", scalar(item).map_err(at)?).into());
                }
            }
            other if takes_value => {
                flags.push(format!("--{long}={}", scalar(other).map_err(at)?).into())
            }
            _ => return Err(at(format!("{key:?} is a switch: write {key} = true or false")).into()),
        }
    }
    Ok(flags)
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!("{} is not a single value", other.type_str())),
    }
}

/// The 1-based line where `key` is set (1 if it cannot be found).
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn from_file(text: &str, argv: &[&str]) -> anyhow::Result<Vec<OsString>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, text).unwrap();
        let mut argv = args(argv);
        argv.extend(args(&["--config", path.to_str().unwrap()]));
        let out = with_file_settings(&crate::cli::Cli::command(), argv)?;
        Ok(out.into_iter().filter(|a| !a.to_string_lossy().contains("serve.toml")).collect())
    }

    #[test]
    fn file_settings_fill_in_defaults_but_never_override_flags() {
        let text = "max-file-size = \"8G\"\nstrict_sessions = true\nidle-timeout = 5\ncompat = [\"crc32-ciphertext\"]\n";
        let out = from_file(text, &["securexfer", "serve", "--idle-timeout", "9"]).unwrap();
        let out: Vec<String> = out.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(out.contains(&"--max-file-size=8G".to_owned()), "{out:?}");
        assert!(out.contains(&"--strict-sessions".to_owned()), "{out:?}");
        assert!(out.contains(&"--compat=crc32-ciphertext".to_owned()), "{out:?}");
        assert!(!out.contains(&"--idle-timeout=5".to_owned()), "the flag wins: {out:?}");
        assert_eq!(out[1], "serve", "settings go after the subcommand: {out:?}");
    }

    #[test]
    fn the_readme_example_is_a_valid_serve_toml() {
        let readme = include_str!("../../README.md");
        let block = readme.split("```toml").nth(1).expect("a toml block").split("```").next();
        let out = from_file(block.unwrap(), &["securexfer", "serve"]).unwrap();
        assert!(out.len() > 3, "{out:?}");
    }

    #[test]
    fn the_operations_guide_example_is_a_valid_serve_toml() {
        let guide = include_str!("../../docs/operations.md");
        let block = guide.split("```toml").nth(1).expect("a toml block").split("```").next();
        let out = from_file(block.unwrap(), &["securexfer", "serve"]).unwrap();
        let out: Vec<String> = out.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(out.contains(&"--metrics=127.0.0.1:9357".to_owned()), "{out:?}");
    }

    #[test]
    fn an_unknown_key_names_the_file_and_line() {
        let err = from_file("port = 1\n\nmax-file-sise = \"1G\"\n", &["securexfer", "serve"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("serve.toml:3:") && err.contains("max-file-sise"), "{err}");
    }

    #[test]
    fn a_switch_needs_a_boolean_and_syntax_errors_name_the_file() {
        let err = from_file("strict-sessions = 3\n", &["securexfer", "serve"]).unwrap_err();
        assert!(err.to_string().contains("serve.toml:1:"), "{err}");
        let err = from_file("port = \n", &["securexfer", "serve"]).unwrap_err();
        assert!(err.to_string().contains("serve.toml"), "{err}");
    }
}
