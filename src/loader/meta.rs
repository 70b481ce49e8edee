//! Metadata reads that collect every problem before failing, so a file with
//! several missing keys is reported in one message (STYLE.md #2).

use quant::gguf::Value;

use super::{LoaderError, ModelFile};

/// Reads typed metadata values; each getter returns a neutral value on a
/// missing or mistyped key and remembers the problem; [`MetaReader::finish`]
/// turns the problems into one [`LoaderError::Metadata`].
pub struct MetaReader<'a> {
    file: &'a ModelFile,
    problems: Vec<String>,
}

impl<'a> MetaReader<'a> {
    pub(super) fn new(file: &'a ModelFile) -> Self {
        MetaReader {
            file,
            problems: Vec::new(),
        }
    }

    fn get(&mut self, key: &str) -> Option<&'a Value> {
        let v = self.file.gguf().get(key);
        if v.is_none() {
            self.problems.push(format!("{key} missing"));
        }
        v
    }

    fn typed<T>(
        &mut self,
        key: &str,
        what: &str,
        conv: impl Fn(&'a Value) -> Option<T>,
    ) -> Option<T> {
        let v = self.get(key)?;
        let r = conv(v);
        if r.is_none() {
            self.problems.push(format!("{key} is not {what}"));
        }
        r
    }

    /// Whether `key` is present (absence is not a problem).
    pub fn has(&self, key: &str) -> bool {
        self.file.gguf().get(key).is_some()
    }

    /// A required unsigned integer.
    pub fn u64(&mut self, key: &str) -> u64 {
        self.typed(key, "an unsigned integer", Value::as_u64)
            .unwrap_or(0)
    }

    /// A required unsigned integer used as a count or size.
    pub fn usize(&mut self, key: &str) -> usize {
        self.u64(key) as usize
    }

    /// An optional unsigned integer; present but mistyped is a problem.
    pub fn opt_usize(&mut self, key: &str) -> Option<usize> {
        if !self.has(key) {
            return None;
        }
        self.typed(key, "an unsigned integer", Value::as_u64)
            .map(|v| v as usize)
    }

    /// A required float.
    pub fn f32(&mut self, key: &str) -> f32 {
        self.typed(key, "a float", Value::as_f32).unwrap_or(0.0)
    }

    /// An optional float.
    pub fn opt_f32(&mut self, key: &str) -> Option<f32> {
        if !self.has(key) {
            return None;
        }
        self.typed(key, "a float", Value::as_f32)
    }

    /// An optional bool.
    pub fn opt_bool(&mut self, key: &str) -> Option<bool> {
        if !self.has(key) {
            return None;
        }
        self.typed(key, "a bool", Value::as_bool)
    }

    /// A required string.
    pub fn str(&mut self, key: &str) -> String {
        self.typed(key, "a string", |v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// An optional string.
    pub fn opt_str(&mut self, key: &str) -> Option<String> {
        if !self.has(key) {
            return None;
        }
        self.typed(key, "a string", |v| v.as_str().map(str::to_string))
    }

    /// Records a problem found by the caller while interpreting values.
    pub fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    /// `Ok` when every read succeeded, else one error listing all problems.
    pub fn finish(self) -> Result<(), LoaderError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(LoaderError::Metadata {
                path: self.file.path().to_path_buf(),
                problems: self.problems,
            })
        }
    }
}
