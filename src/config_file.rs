//! `--config FILE`: the live loop's options in a TOML file (what a systemd service runs with),
//! `check-config FILE` and `--print-config`.
//!
//! A key is an option's long name (`camera = "/dev/video0"`, `fps = 10`, `split-px = 1.0`,
//! `preview = "0.0.0.0:8080"`); `true` turns a switch on. The file becomes command-line arguments
//! placed before the real ones, and the command line is parsed once with later values winning,
//! so a flag given on the command line overrides the file, and every value meets the same checks
//! a flag does. Unknown keys are errors naming the accepted ones; a bad value's error names its
//! key and the file.

use anyhow::{bail, Context, Result};
use clap::{Command, CommandFactory};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Long options that are not settings (actions, or about the file itself).
const NOT_SETTINGS: &[&str] = &["config", "print-config", "list-cameras", "help", "version"];

/// Settings whose values are secrets: refused on the command line, masked by `--print-config`.
pub const SECRET_KEYS: &[&str] = &["mqtt-password"];

/// The keys a config file accepts: the top-level command's long options that are settings.
pub fn accepted_keys<C: CommandFactory>() -> Vec<String> {
    C::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|l| !NOT_SETTINGS.contains(&l.as_str()))
        .collect()
}

/// One setting of the file: its key and the argument strings it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The option's long name.
    pub key: String,
    /// `["--key", "value"]`, `["--key"]` for a switch that is on, nothing for one that is off.
    pub args: Vec<String>,
}

/// Reads and checks a config file's keys and value types (not the values: clap does that).
pub fn read<C: CommandFactory>(path: &Path) -> Result<Vec<Setting>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    parse::<C>(&text).with_context(|| format!("config file {}", path.display()))
}

/// [`read`] on the file's text; every bad key is reported, not just the first.
pub fn parse<C: CommandFactory>(text: &str) -> Result<Vec<Setting>> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    let accepted = accepted_keys::<C>();
    let cmd = C::command();
    let mut settings = vec![];
    let mut errors = vec![];
    for (key, value) in &table {
        if !accepted.iter().any(|k| k == key) {
            errors.push(format!(
                "unknown key {key:?}; the keys are the live loop's long options: {}",
                accepted.join(", ")
            ));
            continue;
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .expect("an accepted key is an argument");
        let switch = !arg.get_action().takes_values();
        let flag = format!("--{key}");
        let args = match value {
            toml::Value::Boolean(on) if switch => {
                if *on {
                    vec![flag]
                } else {
                    vec![]
                }
            }
            _ if switch => {
                errors.push(format!("key {key}: a switch, give true or false"));
                continue;
            }
            toml::Value::String(s) => vec![flag, s.clone()],
            toml::Value::Integer(i) => vec![flag, i.to_string()],
            toml::Value::Float(f) => vec![flag, f.to_string()],
            toml::Value::Boolean(b) => vec![flag, b.to_string()],
            other => {
                errors.push(format!(
                    "key {key}: a {} is not accepted; give a string, a number or a boolean",
                    other.type_str()
                ));
                continue;
            }
        };
        settings.push(Setting {
            key: key.clone(),
            args,
        });
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(settings)
}

/// Each setting's value checked as the command line would check it alone, then all together;
/// returns every problem found, each naming its key.
pub fn check<C: CommandFactory>(settings: &[Setting]) -> Vec<String> {
    let mut problems = vec![];
    for s in settings {
        let argv = std::iter::once("unet-edge".to_string()).chain(s.args.iter().cloned());
        if let Err(e) = C::command().try_get_matches_from(argv) {
            // Alone, a setting may miss the companion another key gives (save-every needs out).
            if e.kind() != clap::error::ErrorKind::MissingRequiredArgument {
                problems.push(format!("key {}: {}", s.key, clean(&e, &C::command())));
            }
        }
    }
    if problems.is_empty() {
        let argv = std::iter::once("unet-edge".to_string())
            .chain(settings.iter().flat_map(|s| s.args.iter().cloned()));
        if let Err(e) = C::command().try_get_matches_from(argv) {
            problems.push(clean(&e, &C::command()));
        }
    }
    problems
}

/// A clap error as one line, its `--flag <VALUE>` forms read as config keys.
fn clean(e: &clap::Error, cmd: &Command) -> String {
    // clap's message without its usage and help hints, on one line.
    let rendered = e.to_string();
    let mut text = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("tip:") && !l.starts_with("For more"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string();
    for a in cmd.get_arguments() {
        if let (Some(long), Some(names)) = (a.get_long(), a.get_value_names()) {
            for n in names {
                // "invalid value 'x' for '--fps <F>': …" — the line already starts with the key.
                text = text.replace(&format!(" for '--{long} <{n}>'"), "");
                text = text.replace(&format!("--{long} <{n}>"), &format!("key {long}"));
            }
        }
        if let Some(long) = a.get_long() {
            text = text.replace(&format!("'--{long}'"), &format!("key {long}"));
        }
    }
    text
}

/// The command line with `--config FILE` (or `--config=FILE`) taken out, and the file named
/// (`None` when there is none).
pub fn expand_args(args: Vec<OsString>) -> Result<(Vec<OsString>, Option<PathBuf>)> {
    let mut rest = vec![];
    let mut path = None;
    let mut it = args.into_iter();
    if let Some(prog) = it.next() {
        rest.push(prog);
    }
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            rest.push(a);
            rest.extend(it.by_ref());
            break;
        }
        if s == "--config" {
            let Some(p) = it.next() else {
                bail!("--config needs a FILE (a TOML file of the live loop's options)");
            };
            path = Some(PathBuf::from(p));
        } else if let Some(p) = s.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        } else {
            rest.push(a);
        }
    }
    Ok((rest, path))
}

/// Effective settings as TOML, one key per line with where its value came from.
pub fn print_effective(
    matches: &clap::ArgMatches,
    cmd: &Command,
    from_cli: &[String],
    from_file: &[String],
    file: Option<&Path>,
) -> String {
    let mut out = String::from("# effective settings of the live loop\n");
    for a in cmd.get_arguments() {
        let Some(long) = a.get_long() else { continue };
        if NOT_SETTINGS.contains(&long) {
            continue;
        }
        let id = a.get_id().as_str();
        let value = if a.get_action().takes_values() {
            match matches.get_raw(id) {
                Some(mut v) => v
                    .next()
                    .map(|v| toml_value(&v.to_string_lossy()))
                    .unwrap_or_default(),
                None => {
                    out.push_str(&format!("# {long} = (not set)\n"));
                    continue;
                }
            }
        } else {
            let on = matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
            on.to_string()
        };
        let value = if SECRET_KEYS.contains(&long) {
            "\"(hidden)\"".to_string()
        } else {
            value
        };
        let source = match matches.value_source(id) {
            Some(clap::parser::ValueSource::DefaultValue) | None => "default".to_string(),
            Some(clap::parser::ValueSource::EnvVariable) => "environment".to_string(),
            _ if from_cli.iter().any(|k| k == long) => "command line".to_string(),
            _ if from_file.iter().any(|k| k == long) => {
                file.map_or("config".into(), |f| f.display().to_string())
            }
            _ => "command line".to_string(),
        };
        out.push_str(&format!("{long} = {value}  # {source}\n"));
    }
    out
}

/// The long names of the options `args` (a command line without any config file) sets.
pub fn set_by(cmd: Command, args: &[OsString]) -> Vec<String> {
    let Ok(m) = cmd.clone().ignore_errors(true).try_get_matches_from(args) else {
        return vec![];
    };
    cmd.get_arguments()
        .filter(|a| {
            m.value_source(a.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

/// A raw option value as a TOML value: numbers and booleans bare, everything else quoted.
fn toml_value(raw: &str) -> String {
    if raw.parse::<f64>().is_ok_and(f64::is_finite) || raw == "true" || raw == "false" {
        raw.to_string()
    } else {
        toml::Value::String(raw.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A small stand-in for the real command line.
    #[derive(Parser, Debug)]
    #[command(name = "t")]
    struct T {
        #[arg(long)]
        fps: Option<f32>,
        #[arg(long)]
        camera: Option<String>,
        #[arg(long)]
        quiet: bool,
        #[arg(long, requires = "out")]
        save_every: Option<u64>,
        #[arg(long)]
        out: Option<String>,
        #[arg(long)]
        config: Option<String>,
    }

    #[test]
    fn keys_become_arguments_and_switches_flags() {
        let s = parse::<T>("fps = 10\ncamera = \"/dev/video0\"\nquiet = true\n").unwrap();
        let args: Vec<String> = s.iter().flat_map(|s| s.args.clone()).collect();
        assert_eq!(args, ["--camera", "/dev/video0", "--fps", "10", "--quiet"]);
        assert!(check::<T>(&s).is_empty());
        // A switch that is off gives nothing.
        let s = parse::<T>("quiet = false").unwrap();
        assert!(s[0].args.is_empty());
    }

    #[test]
    fn every_unknown_key_and_bad_type_is_reported_by_name() {
        let e = parse::<T>("fsp = 10\nquiet = 3\ncamera = [1, 2]\nconfig = \"x\"\n")
            .unwrap_err()
            .to_string();
        for want in [
            "unknown key \"fsp\"",
            "key quiet: a switch, give true or false",
            "key camera: a array is not accepted",
            "unknown key \"config\"",
            "fps, camera",
        ] {
            assert!(e.contains(want), "{want:?} missing from: {e}");
        }
        assert!(parse::<T>("fps = ")
            .unwrap_err()
            .to_string()
            .contains("TOML"));
    }

    #[test]
    fn bad_values_are_named_by_key_and_companions_may_come_from_elsewhere() {
        let s = parse::<T>("fps = \"fast\"\nsave-every = 5\n").unwrap();
        let p = check::<T>(&s);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("key fps: ") && p[0].contains("fast"),
            "{p:?}"
        );
        assert!(!p[0].contains("--fps"), "{p:?}");
        // save-every alone is fine per key; together, its missing companion is reported.
        let s = parse::<T>("save-every = 5\n").unwrap();
        let p = check::<T>(&s);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("out"), "{p:?}");
    }

    #[test]
    fn config_is_taken_out_of_the_command_line() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let (rest, cfg) = expand_args(os(&["p", "--config", "a.toml", "--fps", "3"])).unwrap();
        assert_eq!(rest, os(&["p", "--fps", "3"]));
        assert_eq!(cfg.unwrap(), PathBuf::from("a.toml"));
        let (rest, cfg) = expand_args(os(&["p", "--config=b.toml"])).unwrap();
        assert_eq!((rest, cfg.unwrap()), (os(&["p"]), PathBuf::from("b.toml")));
        assert!(expand_args(os(&["p", "--config"])).is_err());
        // After `--` it is a value, not the option.
        let (rest, cfg) = expand_args(os(&["p", "--", "--config", "x"])).unwrap();
        assert!(cfg.is_none() && rest.len() == 4);
    }
}
