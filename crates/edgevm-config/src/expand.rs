//! `$HOME` / `$PWD` expansion in paths, arguments and environment values.

/// The values substituted for `$HOME` and `$PWD`.
///
/// Expansion replaces `$HOME` and `$PWD` wherever they appear, as long as
/// the next character cannot continue a variable name (so `$HOMEDIR` is left
/// alone). Nothing else is expanded. Using a variable that has no value is an
/// error for that program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathVars {
    /// Value of `$HOME`.
    pub home: Option<String>,
    /// Value of `$PWD`.
    pub pwd: Option<String>,
}

impl PathVars {
    /// Take the values from the process: `HOME` from the environment, `PWD`
    /// from the environment or else the current directory.
    pub fn from_env() -> PathVars {
        let home = std::env::var("HOME").ok().filter(|h| !h.is_empty());
        let pwd = std::env::var("PWD")
            .ok()
            .filter(|p| !p.is_empty())
            .or_else(|| {
                std::env::current_dir()
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned())
            });
        PathVars { home, pwd }
    }

    /// Expand `$HOME` and `$PWD` in `text`.
    pub fn expand(&self, text: &str) -> Result<String, String> {
        if !text.contains('$') {
            return Ok(text.to_string());
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            let mut replaced = false;
            for (var, value) in [("HOME", &self.home), ("PWD", &self.pwd)] {
                if let Some(tail) = after.strip_prefix(var) {
                    let continues = tail
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                    if continues {
                        continue;
                    }
                    let value = value
                        .as_deref()
                        .ok_or_else(|| format!("uses ${var}, but {var} is not set"))?;
                    out.push_str(value);
                    rest = tail;
                    replaced = true;
                    break;
                }
            }
            if !replaced {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}
