//! A backend wrapper that injects faults, for tests: after a countdown of writes, a write
//! fails before it happens, fails after it happened (the caller cannot tell it did: a lost
//! acknowledgement, as a remote's timeout), or, for files, is torn (a prefix of its bytes is
//! stored under its name and the write fails, as a process killed mid-write leaves it).

use super::{Conflict, FileName, Files, Heads, Version};
use std::io::{self, Write};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// What the write the countdown reaches does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails without writing anything.
    FailBefore,
    /// Writes, then fails.
    FailAfter,
    /// Stores the first half of a file's bytes under its name, then fails (files only; a
    /// head record write fails before, as a replace is whole or nothing).
    Tear,
}

/// The countdown and what happens when it runs out (every later write fails too, as after a
/// crash; [`Faulty::reset`] starts a new countdown).
#[derive(Debug)]
pub struct Faulty<B> {
    inner: B,
    left: AtomicI64,
    fault: Mutex<Fault>,
}

fn injected() -> io::Error {
    io::Error::other("injected fault")
}

impl<B> Faulty<B> {
    /// Wraps `inner`: writes after the first `writes` ones meet `fault`.
    pub fn new(inner: B, writes: i64, fault: Fault) -> Faulty<B> {
        Faulty {
            inner,
            left: AtomicI64::new(writes),
            fault: Mutex::new(fault),
        }
    }

    /// A new countdown: the next `writes` writes succeed, the one after meets `fault`.
    pub fn reset(&self, writes: i64, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
        self.left.store(writes, Ordering::SeqCst);
    }

    /// The backend wrapped.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// `None` while writes go through, else the fault to meet.
    fn next(&self) -> Option<Fault> {
        if self.left.fetch_sub(1, Ordering::SeqCst) > 0 {
            None
        } else {
            Some(*self.fault.lock().unwrap_or_else(|p| p.into_inner()))
        }
    }
}

impl<B: Files> Files for Faulty<B> {
    fn put(&self, name: &FileName, parts: &[&[u8]], durable: bool) -> io::Result<()> {
        match self.next() {
            None => self.inner.put(name, parts, durable),
            Some(Fault::FailBefore) => Err(injected()),
            Some(Fault::FailAfter) => {
                self.inner.put(name, parts, durable)?;
                Err(injected())
            }
            Some(Fault::Tear) => {
                let all = parts.concat();
                self.inner.put(name, &[&all[..all.len() / 2]], durable)?;
                Err(injected())
            }
        }
    }

    fn put_streamed(
        &self,
        durable: bool,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<FileName>,
    ) -> io::Result<FileName> {
        let mut buf = Vec::new();
        let name = fill(&mut buf)?;
        self.put(&name, &[&buf], durable)?;
        Ok(name)
    }

    fn read_at(&self, name: &FileName, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read_at(name, offset, len)
    }

    fn read_into(
        &self,
        name: &FileName,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        self.inner.read_into(name, offset, len, buf)
    }

    fn len(&self, name: &FileName) -> io::Result<u64> {
        self.inner.len(name)
    }

    fn list(&self) -> io::Result<Vec<FileName>> {
        self.inner.list()
    }

    fn delete(&self, name: &FileName) -> io::Result<()> {
        match self.next() {
            None => self.inner.delete(name),
            Some(Fault::FailAfter) => {
                self.inner.delete(name)?;
                Err(injected())
            }
            Some(_) => Err(injected()),
        }
    }
}

impl<B: Heads> Heads for Faulty<B> {
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }

    fn read(&self, db: &str) -> io::Result<Option<(Vec<u8>, Version)>> {
        self.inner.read(db)
    }

    fn write(
        &self,
        db: &str,
        expected: Option<Version>,
        bytes: &[u8],
        durable: bool,
    ) -> io::Result<Result<Version, Conflict>> {
        match self.next() {
            None => self.inner.write(db, expected, bytes, durable),
            Some(Fault::FailAfter) => {
                if let Err(c) = self.inner.write(db, expected, bytes, durable)? {
                    return Ok(Err(c));
                }
                Err(injected())
            }
            Some(_) => Err(injected()),
        }
    }
}
