//! Validation of every name, path and value that comes from a caller.

use crate::error::{ApiError, ApiResult};

/// Checks a DNS label: 1–63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
pub fn slug(field: &str, value: &str) -> ApiResult<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            format!(
                "`{value}` is not a valid DNS label: use 1 to 63 lowercase letters, digits and \
                 hyphens, not starting or ending with a hyphen"
            ),
        ))
    }
}

/// Derives a slug from a human name: lowercase, runs of other characters become `-`.
pub fn slug_from_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-');
    out[..out.len().min(63)].trim_end_matches('-').to_owned()
}

/// Checks a human name: 1–100 characters, no control characters.
pub fn name(field: &str, value: &str) -> ApiResult<()> {
    let trimmed = value.trim();
    if trimmed.is_empty() || value.chars().count() > 100 || value.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            field,
            "give a name of 1 to 100 characters without control characters",
        ));
    }
    Ok(())
}

/// Checks a domain name such as `example.com` or `localhost`.
pub fn domain(field: &str, value: &str) -> ApiResult<()> {
    let valid = value.len() <= 253 && value.split('.').all(|label| slug(field, label).is_ok());
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            format!(
                "`{value}` is not a valid domain: use dot-separated DNS labels, e.g. `apps.example.com`"
            ),
        ))
    }
}

/// Checks a `#rrggbb` colour.
pub fn color(field: &str, value: &str) -> ApiResult<()> {
    let ok = value.len() == 7
        && value.starts_with('#')
        && value[1..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            format!("`{value}` is not a colour: use `#rrggbb`, e.g. `#0a7cff`"),
        ))
    }
}

/// Checks an absolute `http(s)://` URL.
pub fn url(field: &str, value: &str) -> ApiResult<()> {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    match rest {
        Some(rest)
            if !rest.is_empty()
                && !value
                    .chars()
                    .any(|c| c.is_whitespace() || c == '"' || c == '<' || c == '>') =>
        {
            Ok(())
        }
        _ => Err(ApiError::invalid_field(
            field,
            format!("`{value}` is not an absolute http(s) URL"),
        )),
    }
}

/// Normalises a workspace-relative path: no absolute paths, no `..`, no empty or `.` parts.
/// The agent checks again against symlinks; this rejects the obvious early with a clear error.
pub fn workspace_path(value: &str) -> ApiResult<String> {
    let invalid = |why: &str| {
        Err(ApiError::invalid_field(
            "path",
            format!(
                "`{value}` {why}: give a path relative to the workspace root, e.g. `src/main.js`"
            ),
        ))
    };
    if value.starts_with('/') {
        return invalid("is absolute");
    }
    if value.contains('\0') {
        return invalid("contains a NUL byte");
    }
    let mut parts = Vec::new();
    for part in value.split('/') {
        match part {
            "" | "." => {}
            ".." => return invalid("leaves the workspace with `..`"),
            other => parts.push(other),
        }
    }
    Ok(parts.join("/"))
}

/// Checks a command line: at least a program, no NUL bytes.
pub fn command(field: &str, cmd: &[String]) -> ApiResult<()> {
    match cmd.first() {
        None => Err(ApiError::invalid_field(
            field,
            "give the command as a non-empty array, e.g. [\"npm\", \"install\"]",
        )),
        Some(p) if p.is_empty() => Err(ApiError::invalid_field(field, "the program name is empty")),
        Some(_) if cmd.iter().any(|a| a.contains('\0')) => Err(ApiError::invalid_field(
            field,
            "arguments may not contain NUL bytes",
        )),
        Some(_) => Ok(()),
    }
}

/// Checks environment variable names: `[A-Za-z_][A-Za-z0-9_]*`, values without NUL.
pub fn env<'a>(
    field: &str,
    vars: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> ApiResult<()> {
    for (k, v) in vars {
        let ok = k
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(ApiError::invalid_field(
                field,
                format!(
                    "`{k}` is not a valid variable name: use letters, digits and `_`, not starting with a digit"
                ),
            ));
        }
        if v.contains('\0') {
            return Err(ApiError::invalid_field(
                field,
                format!("the value of `{k}` contains a NUL byte"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["a", "my-app", "app1", &"a".repeat(63)] {
            assert!(slug("slug", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "My", "a_b", "a.b", &"a".repeat(64), "é"] {
            assert!(slug("slug", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slugs_from_names() {
        assert_eq!(slug_from_name("My Cool App!"), "my-cool-app");
        assert_eq!(slug_from_name("  --x--  "), "x");
        assert_eq!(slug_from_name("日本"), "");
    }

    #[test]
    fn workspace_paths() {
        assert_eq!(workspace_path("src//./a.js").ok(), Some("src/a.js".into()));
        assert_eq!(workspace_path("").ok(), Some(String::new()));
        for bad in ["/etc/passwd", "../x", "a/../../x", "a\0b"] {
            assert!(workspace_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domains_colors_urls() {
        assert!(domain("d", "localhost").is_ok());
        assert!(domain("d", "apps.example.com").is_ok());
        assert!(domain("d", "bad..com").is_err());
        assert!(color("c", "#0a7CFF").is_ok());
        assert!(color("c", "red").is_err());
        assert!(url("u", "https://x.test/logo.png").is_ok());
        assert!(url("u", "javascript:alert(1)").is_err());
    }
}
