//! Named intermediate dumps, to compare with the reference stage by stage
//! (STYLE.md #11, llama.cpp's `cb(cur, "name", il)`).
//!
//! The model calls [`Trace::tap`] at each named point; a disabled trace costs
//! one branch. A trace either writes `.npy` files into a directory (the CLI's
//! `--trace DIR`) or keeps the arrays in memory (tests). Each forward call
//! gets an index so chunked prefill and decode steps do not overwrite each
//! other: `DIR/{call:04}.{name}[.{layer}].npy`.

use std::path::PathBuf;

use crate::npy;

/// One recorded array.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub call: usize,
    pub name: String,
    pub layer: Option<usize>,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Debug, Default)]
enum Sink {
    #[default]
    Off,
    Dir(PathBuf),
    Memory(Vec<Record>),
}

/// Where taps go.
#[derive(Debug, Default)]
pub struct Trace {
    sink: Sink,
    call: usize,
    /// First write error, reported by [`Trace::error`] (a failed dump must not
    /// abort generation).
    error: Option<String>,
}

impl Trace {
    /// A trace that records nothing.
    pub fn off() -> Trace {
        Trace::default()
    }

    /// Writes `.npy` files into `dir` (created if needed).
    pub fn to_dir(dir: PathBuf) -> std::io::Result<Trace> {
        std::fs::create_dir_all(&dir)?;
        Ok(Trace {
            sink: Sink::Dir(dir),
            ..Trace::default()
        })
    }

    /// Keeps every tap in memory.
    pub fn in_memory() -> Trace {
        Trace {
            sink: Sink::Memory(Vec::new()),
            ..Trace::default()
        }
    }

    pub fn enabled(&self) -> bool {
        !matches!(self.sink, Sink::Off)
    }

    /// Starts a new forward call (taps of different calls are kept apart).
    pub fn next_call(&mut self) {
        if self.enabled() {
            self.call += 1;
        }
    }

    /// Records `data` of `shape` under `name` (and `layer`).
    pub fn tap(&mut self, name: &str, layer: Option<usize>, shape: &[usize], data: &[f32]) {
        let call = self.call;
        match &mut self.sink {
            Sink::Off => {}
            Sink::Memory(v) => v.push(Record {
                call,
                name: name.to_string(),
                layer,
                shape: shape.to_vec(),
                data: data.to_vec(),
            }),
            Sink::Dir(dir) => {
                let file = match layer {
                    Some(l) => format!("{call:04}.{name}.{l}.npy"),
                    None => format!("{call:04}.{name}.npy"),
                };
                if let Err(e) = npy::write_f32(&dir.join(&file), shape, data) {
                    self.error.get_or_insert(format!("{file}: {e}"));
                }
            }
        }
    }

    /// The in-memory records (empty unless [`Trace::in_memory`]).
    pub fn records(&self) -> &[Record] {
        match &self.sink {
            Sink::Memory(v) => v,
            _ => &[],
        }
    }

    /// Drops the in-memory records.
    pub fn clear(&mut self) {
        if let Sink::Memory(v) = &mut self.sink {
            v.clear();
        }
    }

    /// The first write error, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}
