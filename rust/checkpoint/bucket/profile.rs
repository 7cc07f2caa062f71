//! Static credentials and the region of an AWS profile (`~/.aws/credentials`
//! and `~/.aws/config`), which the object-store client does not read: the
//! files AWS tools share, so a profile that works for `aws s3 ls` works here.
//!
//! Used only when neither the environment nor the caller's options give a key
//! (they win, as in AWS tools). `AWS_PROFILE` names the profile (`default`
//! otherwise); `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` move the
//! files. Only plain keys are read: profiles that assume a role or run a
//! process are left to the environment.

use std::collections::HashMap;
use std::path::PathBuf;

/// What the profile gives, by the client's option names.
pub fn profile_settings() -> Vec<(&'static str, String)> {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        return Vec::new();
    };
    let file = |var: &str, default: &str| {
        std::env::var_os(var).map_or_else(|| home.join(".aws").join(default), PathBuf::from)
    };
    let credentials = read_section(
        &file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
        &profile,
    );
    let config_section = if profile == "default" {
        profile.clone()
    } else {
        format!("profile {profile}")
    };
    let config = read_section(&file("AWS_CONFIG_FILE", "config"), &config_section);
    let mut settings = Vec::new();
    for (key, option) in [
        ("aws_access_key_id", "aws_access_key_id"),
        ("aws_secret_access_key", "aws_secret_access_key"),
        ("aws_session_token", "aws_session_token"),
    ] {
        if let Some(value) = credentials.get(key) {
            settings.push((option, value.clone()));
        }
    }
    if let Some(region) = config.get("region") {
        settings.push(("aws_region", region.clone()));
    }
    settings
}

/// The `key = value` lines of `[section]` in an INI file; empty when the
/// file or the section is missing.
fn read_section(path: &PathBuf, section: &str) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .map(|text| parse_section(&text, section))
        .unwrap_or_default()
}

fn parse_section(text: &str, section: &str) -> HashMap<String, String> {
    let mut values = HashMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if let (true, Some((key, value))) = (inside, line.split_once('=')) {
            values.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::parse_section;

    #[test]
    fn reads_one_section_of_an_ini_file() {
        let text = "[default]\naws_access_key_id = A\n# c\n[profile dev]\nregion=eu-west-1\n[other]\nregion = x\n";
        assert_eq!(parse_section(text, "default")["aws_access_key_id"], "A");
        assert_eq!(parse_section(text, "profile dev")["region"], "eu-west-1");
        assert!(parse_section(text, "missing").is_empty());
    }
}
