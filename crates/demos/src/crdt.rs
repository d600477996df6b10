//! A small sequence CRDT (RGA: replicated growable array) for the collaborative editor: every
//! character has a unique id (a Lamport counter and the id of the site that typed it) and is
//! inserted after the id of the character it followed; deleted characters stay as tombstones. Two
//! replicas that applied the same operations, in any order that respects causality (an insert
//! after the character it refers to), hold the same text. Applying an operation twice changes
//! nothing, so a client may resend after a reconnect.
//!
//! Characters are UTF-16 code units, as in the browser's text fields. The page's copy is
//! `crates/demos/assets/crdt.js`, the same algorithm.

use serde::{Deserialize, Serialize};

/// A character's id: Lamport counter, then site; compared in that order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Id(pub(crate) u64, pub(crate) String);

/// One edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub(crate) enum Op {
    /// Insert `ch` (one UTF-16 code unit) after `after` (`None`: at the start).
    Ins { id: Id, after: Option<Id>, ch: u16 },
    /// Delete the character `id`.
    Del { id: Id },
}

/// One element of the sequence.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Elem {
    id: Id,
    ch: u16,
    deleted: bool,
}

/// Why an operation cannot be applied (yet).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// It refers to a character this replica does not have.
    Unknown,
}

/// A replica of the document.
#[derive(Debug, Default, Clone)]
pub(crate) struct Doc {
    elems: Vec<Elem>,
}

impl Doc {
    /// Applies `op`. Returns whether it changed anything (false for a repeat).
    pub(crate) fn apply(&mut self, op: &Op) -> Result<bool, Refused> {
        match op {
            Op::Ins { id, after, ch } => {
                if self.index(id).is_some() {
                    return Ok(false);
                }
                let mut i = match after {
                    None => 0,
                    Some(a) => self.index(a).ok_or(Refused::Unknown)? + 1,
                };
                // Newer inserts after the same character (and what follows them) come first.
                while i < self.elems.len() && self.elems[i].id > *id {
                    i += 1;
                }
                self.elems.insert(
                    i,
                    Elem {
                        id: id.clone(),
                        ch: *ch,
                        deleted: false,
                    },
                );
                Ok(true)
            }
            Op::Del { id } => {
                let i = self.index(id).ok_or(Refused::Unknown)?;
                let changed = !self.elems[i].deleted;
                self.elems[i].deleted = true;
                Ok(changed)
            }
        }
    }

    fn index(&self, id: &Id) -> Option<usize> {
        self.elems.iter().position(|e| e.id == *id)
    }

    /// The visible text.
    #[cfg(test)]
    pub(crate) fn text(&self) -> String {
        let units: Vec<u16> = self
            .elems
            .iter()
            .filter(|e| !e.deleted)
            .map(|e| e.ch)
            .collect();
        String::from_utf16_lossy(&units)
    }

    /// Every element, tombstones included (what a new replica starts from).
    pub(crate) fn elems(&self) -> &[Elem] {
        &self.elems
    }

    /// Elements, tombstones included.
    pub(crate) fn len(&self) -> usize {
        self.elems.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A site: its replica, its Lamport clock, and the ops it made.
    struct Site {
        name: String,
        doc: Doc,
        clock: u64,
    }

    impl Site {
        fn new(name: &str) -> Self {
            Self {
                name: name.into(),
                doc: Doc::default(),
                clock: 0,
            }
        }

        fn visible(&self) -> Vec<Id> {
            self.doc
                .elems
                .iter()
                .filter(|e| !e.deleted)
                .map(|e| e.id.clone())
                .collect()
        }

        /// Inserts `ch` at visible position `pos`.
        fn insert(&mut self, pos: usize, ch: char) -> Op {
            let visible = self.visible();
            let after = pos.checked_sub(1).map(|p| visible[p].clone());
            self.clock = self.clock.max(self.max_seen()) + 1;
            let op = Op::Ins {
                id: Id(self.clock, self.name.clone()),
                after,
                ch: ch as u16,
            };
            self.doc.apply(&op).unwrap();
            op
        }

        fn delete(&mut self, pos: usize) -> Op {
            let op = Op::Del {
                id: self.visible()[pos].clone(),
            };
            self.doc.apply(&op).unwrap();
            op
        }

        fn max_seen(&self) -> u64 {
            self.doc.elems.iter().map(|e| e.id.0).max().unwrap_or(0)
        }
    }

    /// A deterministic pseudo-random sequence.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// Applies `ops` in order, retrying the ones that refer to what has not arrived yet (as the
    /// server's causal order guarantees in the real thing).
    fn deliver(doc: &mut Doc, ops: &[Op]) {
        let mut waiting: Vec<Op> = ops.to_vec();
        while !waiting.is_empty() {
            let before = waiting.len();
            waiting.retain(|op| doc.apply(op).is_err());
            assert!(waiting.len() < before, "stuck on {waiting:?}");
        }
    }

    #[test]
    fn concurrent_inserts_at_the_same_place_converge() {
        let mut a = Site::new("a");
        let mut b = Site::new("b");
        let base = a.insert(0, 'x');
        b.doc.apply(&base).unwrap();
        let oa = vec![a.insert(1, '1'), a.insert(2, '2')];
        let ob = vec![b.insert(1, '3'), b.insert(2, '4')];
        deliver(&mut a.doc, &ob);
        deliver(&mut b.doc, &oa);
        assert_eq!(a.doc.text(), b.doc.text());
        // Each site's run stays together.
        let text = a.doc.text();
        assert!(text.contains("12") && text.contains("34"), "{text}");
    }

    #[test]
    fn repeats_and_deletes_of_deleted_change_nothing() {
        let mut a = Site::new("a");
        let ins = a.insert(0, 'h');
        assert_eq!(a.doc.apply(&ins), Ok(false));
        let del = a.delete(0);
        assert_eq!(a.doc.apply(&del), Ok(false));
        assert_eq!(a.doc.text(), "");
        let unknown = Op::Del {
            id: Id(9, "z".into()),
        };
        assert_eq!(a.doc.apply(&unknown), Err(Refused::Unknown));
    }

    #[test]
    fn random_concurrent_edits_converge_in_any_delivery_order() {
        for seed in 1..200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut sites: Vec<Site> = ["a", "b", "c"].iter().map(|n| Site::new(n)).collect();
            let mut all: Vec<Op> = Vec::new();
            for _round in 0..4 {
                // Every site edits concurrently, without seeing the others' edits of this round.
                let mut round: Vec<Vec<Op>> = Vec::new();
                for site in &mut sites {
                    let mut ops = Vec::new();
                    for _ in 0..1 + rng.below(5) {
                        let len = site.visible().len();
                        if len > 0 && rng.below(3) == 0 {
                            ops.push(site.delete(rng.below(len)));
                        } else {
                            let ch = (b'a' + rng.below(26) as u8) as char;
                            ops.push(site.insert(rng.below(len + 1), ch));
                        }
                    }
                    round.push(ops);
                }
                // Then each site gets the others' ops, in an order of its own.
                for (i, site) in sites.iter_mut().enumerate() {
                    let mut order: Vec<usize> = (0..round.len()).filter(|&j| j != i).collect();
                    if rng.below(2) == 0 {
                        order.reverse();
                    }
                    for j in order {
                        deliver(&mut site.doc, &round[j]);
                    }
                }
                all.extend(round.into_iter().flatten());
            }
            let text = sites[0].doc.text();
            for site in &sites {
                assert_eq!(site.doc.text(), text, "seed {seed}");
            }
            // A fresh replica that gets everything in the server's order agrees too.
            let mut fresh = Doc::default();
            deliver(&mut fresh, &all);
            assert_eq!(fresh.text(), text, "seed {seed}");
        }
    }
}
