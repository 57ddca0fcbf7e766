//! A logger's template registry: the table of its registered templates
//! (each one a `template::Template`), interned by source text, append-only,
//! read without locks.
//!
//! Invariants:
//! - Ids are dense, start at 0 and are never reused or removed, so a reader
//!   that sees slot `tid` filled can use it for the logger's lifetime.
//! - A slot is filled once (`OnceLock`) before its id is returned from
//!   [`Registry::register`]; producers and the drain read it with one
//!   acquire load, no lock.

use crate::template::{Template, TemplateError};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, OnceLock};

/// Most templates one logger holds (identical texts share one id).
pub const MAX_TEMPLATES: usize = 4096;

pub struct Entry {
    pub template: Template,
    pub arity: usize,
    /// A push of this template also writes what is queued, on the pushing
    /// thread ([`crate::Logger::flush_on_push`]). A flag, not a lock: set
    /// once by the registering side, read (relaxed) by every push; a push
    /// that misses a concurrent set just leaves its writing to the drain.
    pub flush_on_push: AtomicBool,
}

pub struct Registry {
    slots: Box<[OnceLock<Box<Entry>>]>,
    by_text: Mutex<HashMap<String, u32>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            slots: (0..MAX_TEMPLATES).map(|_| OnceLock::new()).collect(),
            by_text: Mutex::new(HashMap::new()),
        }
    }

    /// Parses `source` (or finds it already registered) and returns its id.
    pub fn register(&self, source: &str) -> Result<u32, TemplateError> {
        let mut by_text = self.by_text.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&tid) = by_text.get(source) {
            return Ok(tid);
        }
        let template = Template::parse(source)?;
        let arity = template.arity();
        if arity > crate::MAX_VALUES {
            return Err(TemplateError {
                position: 0,
                message: format!(
                    "template has {arity} fields, at most {} are supported",
                    crate::MAX_VALUES
                ),
            });
        }
        let tid = by_text.len();
        if tid >= MAX_TEMPLATES {
            return Err(TemplateError {
                position: 0,
                message: format!("logger already holds the maximum of {MAX_TEMPLATES} templates"),
            });
        }
        if self.slots[tid]
            .set(Box::new(Entry {
                template,
                arity,
                flush_on_push: AtomicBool::new(false),
            }))
            .is_err()
        {
            unreachable!("slot {tid} filled twice under the registration lock");
        }
        by_text.insert(source.to_owned(), tid as u32);
        Ok(tid as u32)
    }

    #[inline]
    pub fn get(&self, tid: u32) -> Option<&Entry> {
        self.slots.get(tid as usize)?.get().map(|b| &**b)
    }
}
