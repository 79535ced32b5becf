//! The table of everything registered with the poll: connections, listeners, user sources.
//!
//! A slab whose every lookup checks a serial number, so that no id and no mio token of an
//! entry that is gone can ever reach the entry that reuses its slot:
//!
//! * ids ([`ConnId`], [`ListenerId`], [`SourceId`]) carry the slot and the entry's serial
//!   (unique per reactor, never reused); [`Table::get`] compares both.
//! * mio tokens carry the slot and the low [`GEN_BITS`] bits of the serial. An event that
//!   was collected for an entry that ended within the same batch (or, hosted, between two
//!   `handle_event` calls) names the old serial and is dropped by [`Table::by_token`]. Two
//!   entries of one slot can share token bits only after 2^23 entries were created in
//!   between, which cannot happen while one batch of events is handled.
//!
//! Token arithmetic lives here and nowhere else.

use std::io;

use mio::Token;
use slab::Slab;

use super::{Conn, Listener, UserSource};
use crate::event::{ConnId, ListenerId, SourceId};

/// Slot bits of a token: at most 2^24 (16.7 million) entries at once.
const INDEX_BITS: u32 = 24;
/// Serial bits of a token.
const GEN_BITS: u32 = 23;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;

/// Tokens a reactor uses: `base .. base + TOKEN_SPAN` (`base` itself is the waker's).
pub const TOKEN_SPAN: usize = 1 << (INDEX_BITS + GEN_BITS + 1);

/// A slot and the serial of the entry in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) index: u32,
    pub(crate) serial: u64,
}

impl From<ConnId> for Key {
    fn from(id: ConnId) -> Key {
        Key {
            index: id.index,
            serial: id.gen_,
        }
    }
}

impl From<ListenerId> for Key {
    fn from(id: ListenerId) -> Key {
        Key {
            index: id.index,
            serial: id.gen_,
        }
    }
}

impl From<SourceId> for Key {
    fn from(id: SourceId) -> Key {
        Key {
            index: id.index,
            serial: id.gen_,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Entry {
    Conn(Box<Conn>),
    Listener(Box<Listener>),
    Source(UserSource),
}

#[derive(Debug)]
struct Slot {
    serial: u64,
    entry: Entry,
}

#[derive(Debug)]
pub(crate) struct Table {
    slab: Slab<Slot>,
    next_serial: u64,
    /// The waker's token; entries use `base + 1 ..`.
    base: usize,
}

impl Table {
    pub(crate) fn new(base: usize) -> Table {
        Table {
            slab: Slab::new(),
            next_serial: 1,
            base,
        }
    }

    /// The waker's token.
    pub(crate) fn waker_token(&self) -> Token {
        Token(self.base)
    }

    /// Whether `token` is in this table's range (the waker's included).
    pub(crate) fn owns(&self, token: Token) -> bool {
        token.0.wrapping_sub(self.base) < TOKEN_SPAN
    }

    /// Insert an entry made by `make` from its key and token (the token is what `make`
    /// registers with the poll). Nothing is inserted when `make` fails.
    pub(crate) fn insert(
        &mut self,
        make: impl FnOnce(Key, Token) -> io::Result<Entry>,
    ) -> io::Result<Key> {
        let index = self.slab.vacant_key();
        if index > INDEX_MASK {
            return Err(io::Error::other("reactor table full (2^24 entries)"));
        }
        let key = Key {
            index: index as u32,
            serial: self.next_serial,
        };
        let entry = make(key, self.token(key))?;
        self.next_serial += 1;
        self.slab.insert(Slot {
            serial: key.serial,
            entry,
        });
        Ok(key)
    }

    /// The key and token the next [`insert`](Table::insert) would use, without inserting:
    /// register a socket under the token, then [`fill`](Table::fill) the slot. Nothing may
    /// be inserted or removed in between.
    pub(crate) fn reserve(&self) -> io::Result<(Key, Token)> {
        let index = self.slab.vacant_key();
        if index > INDEX_MASK {
            return Err(io::Error::other("reactor table full (2^24 entries)"));
        }
        let key = Key {
            index: index as u32,
            serial: self.next_serial,
        };
        Ok((key, self.token(key)))
    }

    /// Insert `entry` under a key [`reserve`](Table::reserve) just gave.
    pub(crate) fn fill(&mut self, key: Key, entry: Entry) {
        debug_assert_eq!(key.index as usize, self.slab.vacant_key());
        debug_assert_eq!(key.serial, self.next_serial);
        self.next_serial += 1;
        self.slab.insert(Slot {
            serial: key.serial,
            entry,
        });
    }

    fn token(&self, key: Key) -> Token {
        let bits = ((key.serial & GEN_MASK) as usize) << INDEX_BITS | key.index as usize;
        Token(self.base + 1 + bits)
    }

    /// The entry a token names, if it is still there (serial bits checked).
    pub(crate) fn by_token(&self, token: Token) -> Option<(Key, &Entry)> {
        let bits = token.0.checked_sub(self.base + 1)?;
        let index = bits & INDEX_MASK;
        let gen_ = (bits >> INDEX_BITS) as u64;
        let slot = self.slab.get(index)?;
        (slot.serial & GEN_MASK == gen_).then_some((
            Key {
                index: index as u32,
                serial: slot.serial,
            },
            &slot.entry,
        ))
    }

    pub(crate) fn get(&self, key: impl Into<Key>) -> Option<&Entry> {
        let key = key.into();
        let slot = self.slab.get(key.index as usize)?;
        (slot.serial == key.serial).then_some(&slot.entry)
    }

    pub(crate) fn get_mut(&mut self, key: impl Into<Key>) -> Option<&mut Entry> {
        let key = key.into();
        let slot = self.slab.get_mut(key.index as usize)?;
        (slot.serial == key.serial).then_some(&mut slot.entry)
    }

    pub(crate) fn remove(&mut self, key: impl Into<Key>) -> Option<Entry> {
        let key = key.into();
        self.get(key)?;
        Some(self.slab.remove(key.index as usize).entry)
    }

    pub(crate) fn conn(&self, id: ConnId) -> Option<&Conn> {
        match self.get(id) {
            Some(Entry::Conn(c)) => Some(c),
            _ => None,
        }
    }

    pub(crate) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        match self.get_mut(id) {
            Some(Entry::Conn(c)) => Some(c),
            _ => None,
        }
    }

    pub(crate) fn listener_mut(&mut self, id: ListenerId) -> Option<&mut Listener> {
        match self.get_mut(id) {
            Some(Entry::Listener(l)) => Some(l),
            _ => None,
        }
    }

    /// Every listener.
    pub(crate) fn listeners(&self) -> impl Iterator<Item = ListenerId> + '_ {
        self.slab.iter().filter_map(|(_, s)| match &s.entry {
            Entry::Listener(l) => Some(l.id),
            _ => None,
        })
    }

    /// Every connection.
    pub(crate) fn conns(&self) -> impl Iterator<Item = &Conn> {
        self.slab.iter().filter_map(|(_, s)| match &s.entry {
            Entry::Conn(c) => Some(&**c),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(t: &mut Table) -> Key {
        t.insert(|key, _| {
            Ok(Entry::Source(UserSource {
                id: SourceId {
                    gen_: key.serial,
                    index: key.index,
                },
            }))
        })
        .unwrap()
    }

    /// A token kept from an entry that is gone never names the entry that reuses its slot,
    /// and neither does its id.
    #[test]
    fn stale_tokens_and_ids_never_reach_a_reused_slot() {
        let mut t = Table::new(1 << 40);
        let a = source(&mut t);
        let token_a = t.token(a);
        assert_eq!(t.by_token(token_a).map(|(k, _)| k), Some(a));
        assert!(t.remove(a).is_some());
        let b = source(&mut t);
        assert_eq!(b.index, a.index, "the slot is reused");
        assert!(
            t.by_token(token_a).is_none(),
            "a stale token reached the new entry"
        );
        assert!(t.get(a).is_none(), "a stale id reached the new entry");
        assert_eq!(t.by_token(t.token(b)).map(|(k, _)| k), Some(b));
        assert!(t.owns(token_a) && t.owns(t.waker_token()));
        assert!(!t.owns(Token(1 << 39)) && !t.owns(Token((1 << 40) + TOKEN_SPAN)));
        assert!(t.by_token(t.waker_token()).is_none());
    }
}
