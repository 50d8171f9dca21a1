//! Errors produced while loading and validating configuration.

use thiserror::Error;

/// Everything that can go wrong while loading a configuration.
///
/// Whole-file problems (unreadable file, JSON syntax error, top level not an
/// object) are returned directly from [`crate::Config::load_files`] /
/// [`crate::Config::from_str`]. Problems with a single program or group are
/// stored next to that entry in [`crate::Config::programs`] /
/// [`crate::Config::groups`], so the other programs keep working.
///
/// Every message names the file, program/group and key it is about, so it
/// can be logged as-is. The type is `Clone` + `PartialEq` (I/O errors are kept
/// as text) so that a `Config` can be cloned and errors compared in tests.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A configuration file could not be read.
    #[error("{path}: cannot read configuration file: {message}")]
    Io {
        /// The path as given.
        path: String,
        /// The operating system's error text.
        message: String,
    },

    /// The text is not valid JSON-with-comments (this includes trailing
    /// commas, which are rejected on purpose). `line` and `column` are
    /// 1-based, as reported by serde_json.
    #[error("{source_name}:{line}:{column}: {message}")]
    Syntax {
        /// File name (or other source name) of the text.
        source_name: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong, e.g. `trailing comma`.
        message: String,
    },

    /// The document is valid JSON but not shaped like a configuration (e.g.
    /// the top level or an entry is not an object).
    #[error("{source_name}: {message}")]
    Structure {
        /// File name (or other source name) of the text.
        source_name: String,
        /// What is wrong.
        message: String,
    },

    /// A key of a program or group has a value of the wrong type, out of
    /// range or not on its granularity.
    #[error("{source_name}: {name}: '{key}' {message}")]
    InvalidValue {
        /// File name the offending object came from.
        source_name: String,
        /// Program or group name.
        name: String,
        /// The key as written in the file.
        key: String,
        /// Why the value is refused, e.g. `must be a multiple of 2 MB, got 3`.
        message: String,
    },

    /// A program (after applying its group and its own keys) has a setting
    /// that is a valid configuration value but that edgevm cannot honour yet.
    #[error("{name}: '{key}' is not supported yet")]
    NotSupported {
        /// Program name.
        name: String,
        /// Canonical key name.
        key: String,
    },

    /// A combination of settings of a program or group is invalid.
    #[error("{name}: {message}")]
    Inconsistent {
        /// Program or group name.
        name: String,
        /// What is wrong.
        message: String,
    },

    /// A program refers to a group that no configuration file defines.
    #[error("{program}: unknown group '{group}'{hint}")]
    UnknownGroup {
        /// Program name.
        program: String,
        /// The group it asked for.
        group: String,
        /// `" (did you mean 'x'?)"` or `" (groups: a, b)"`.
        hint: String,
    },

    /// A program name no request can reach: an admin path of the server, or characters a
    /// URL path segment cannot carry as they are.
    #[error("{program}: {message}")]
    UnreachableName {
        /// Program name.
        program: String,
        /// Why, and what to do.
        message: String,
    },

    /// A program's group has errors of its own, so the program cannot be
    /// configured.
    #[error("{program}: group '{group}' is invalid: {error}")]
    GroupInvalid {
        /// Program name.
        program: String,
        /// Group name.
        group: String,
        /// The group's own error.
        error: Box<ConfigError>,
    },

    /// A later file tried to move an existing program to another group.
    #[error(
        "{program}: the group of an existing program cannot be changed \
         (was '{from}', {source_name} says '{to}')"
    )]
    GroupChanged {
        /// Program name.
        program: String,
        /// The group from the first definition.
        from: String,
        /// The group the override asked for.
        to: String,
        /// The file with the override.
        source_name: String,
    },

    /// Several independent errors in one program or group.
    #[error("{}", join(.0))]
    Multiple(Vec<ConfigError>),
}

fn join(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ConfigError {
    /// Combine a non-empty list of errors into one (a single error stays as
    /// it is). Returns `None` for an empty list.
    pub fn combine(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(ConfigError::Multiple(errors)),
        }
    }

    /// The individual errors (one element unless this is
    /// [`ConfigError::Multiple`]).
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        match self {
            ConfigError::Multiple(v) => v.iter().collect::<Vec<_>>().into_iter(),
            other => vec![other].into_iter(),
        }
    }
}
