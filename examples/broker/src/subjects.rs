//! Subjects and the subscription index (sans-IO).
//!
//! A subject is a string of tokens separated by `.`. In a subscription a token `*`
//! matches any one token and a last token `>` matches one or more tokens.
//!
//! [`Index`] is a trie with one level per token: a node has its literal children in a
//! hash map, plus at most one `*` child and one `>` child, and keeps the subscriptions
//! whose subject ends there (plain ones in a list, queue subscriptions in one list per
//! group, the groups found by name through a hash map). Matching a published subject
//! walks the literal, `*` and `>` branches for each of its tokens, so a publish costs the
//! nodes on those paths and the subscribers it reaches, never a scan of unrelated
//! subscriptions; the groups of several matched nodes are merged by name through a hash
//! map too, so a publish reaching G groups costs O(G). A published subject with an empty
//! token (`a..b`, `a.`, `.a`, `.`) matches nothing, as in nats-server. Removing a
//! subscription is O(1) (swap-remove at a position the caller remembers in its [`Loc`]),
//! and empty nodes are pruned.

use std::collections::HashMap;

use bytes::Bytes;
use slab::Slab;

/// Whether `s` is a valid subscription subject: non-empty tokens; a token that is `*`
/// or `>` is a wildcard, and `>` only as the last token. (Like nats-server, a token that
/// merely contains `*` or `>` is a literal.)
pub fn valid_subject(s: &[u8]) -> bool {
    if s.is_empty() {
        return false;
    }
    let mut tokens = s.split(|&b| b == b'.').peekable();
    while let Some(t) = tokens.next() {
        if t.is_empty() || (t == b">" && tokens.peek().is_some()) {
            return false;
        }
    }
    true
}

/// Whether `s` is a valid subject to publish to: valid and without wildcard tokens.
pub fn valid_literal_subject(s: &[u8]) -> bool {
    valid_subject(s) && s.split(|&b| b == b'.').all(|t| t != b"*" && t != b">")
}

/// Where a subscription sits in the [`Index`]; needed to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    node: usize,
    /// Queue group (a key in the node's group slab), `None` for a plain subscription.
    group: Option<usize>,
    /// Position in the node's (or group's) list.
    pos: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Root,
    Literal(Bytes),
    Star,
    Gt,
}

#[derive(Debug)]
struct Group<T> {
    name: Bytes,
    members: Vec<T>,
}

#[derive(Debug)]
struct Node<T> {
    parent: usize,
    key: Key,
    children: HashMap<Bytes, usize>,
    star: Option<usize>,
    gt: Option<usize>,
    plain: Vec<T>,
    groups: Slab<Group<T>>,
    /// Group name -> key in `groups`.
    group_keys: HashMap<Bytes, usize>,
}

impl<T> Node<T> {
    fn new(parent: usize, key: Key) -> Self {
        Node {
            parent,
            key,
            children: HashMap::new(),
            star: None,
            gt: None,
            plain: Vec::new(),
            groups: Slab::new(),
            group_keys: HashMap::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.gt.is_none()
            && self.plain.is_empty()
            && self.groups.is_empty()
    }
}

/// What a publish reaches: every plain subscription, and per queue group (merged by name
/// across the nodes that matched) its members, of which one gets the message.
#[derive(Debug)]
pub struct Matches<T> {
    /// Plain subscriptions: each gets the message.
    pub plain: Vec<T>,
    /// The groups reached, `..ngroups` (the slots beyond are kept for their allocations).
    groups: Vec<(Bytes, Vec<T>)>,
    ngroups: usize,
    /// Name -> slot in `groups`, filled only once a second node brings groups (names are
    /// distinct within one node, so the common case of one node needs no lookups).
    by_name: HashMap<Bytes, usize>,
    indexed: bool,
    tokens: Vec<(usize, usize)>,
}

impl<T> Default for Matches<T> {
    fn default() -> Self {
        Matches {
            plain: Vec::new(),
            groups: Vec::new(),
            ngroups: 0,
            by_name: HashMap::new(),
            indexed: false,
            tokens: Vec::new(),
        }
    }
}

impl<T: Copy> Matches<T> {
    /// The queue groups reached: name and members.
    pub fn groups(&self) -> impl Iterator<Item = (&Bytes, &[T])> {
        self.groups[..self.ngroups]
            .iter()
            .map(|(n, m)| (n, m.as_slice()))
    }

    fn clear(&mut self) {
        self.plain.clear();
        self.ngroups = 0;
        self.indexed = false;
    }

    fn add_node(&mut self, node: &Node<T>) {
        self.plain.extend_from_slice(&node.plain);
        if node.groups.is_empty() {
            return;
        }
        if self.ngroups == 0 {
            // The first node with groups: its names are distinct, nothing to merge.
            for (_, g) in node.groups.iter() {
                self.push_group(g);
            }
            return;
        }
        if !self.indexed {
            self.by_name.clear();
            for (i, (name, _)) in self.groups[..self.ngroups].iter().enumerate() {
                self.by_name.insert(name.clone(), i);
            }
            self.indexed = true;
        }
        for (_, g) in node.groups.iter() {
            match self.by_name.get(&g.name) {
                Some(&i) => self.groups[i].1.extend_from_slice(&g.members),
                None => {
                    let i = self.push_group(g);
                    self.by_name.insert(g.name.clone(), i);
                }
            }
        }
    }

    /// A new group slot with `g`'s members; returns its index.
    fn push_group(&mut self, g: &Group<T>) -> usize {
        if self.ngroups == self.groups.len() {
            self.groups.push((g.name.clone(), Vec::new()));
        }
        let slot = &mut self.groups[self.ngroups];
        slot.0 = g.name.clone();
        slot.1.clear();
        slot.1.extend_from_slice(&g.members);
        self.ngroups += 1;
        self.ngroups - 1
    }
}

/// The subscription trie. `T` is the caller's handle of a subscription.
#[derive(Debug)]
pub struct Index<T> {
    nodes: Slab<Node<T>>,
    len: usize,
}

impl<T: Copy> Default for Index<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy> Index<T> {
    /// An empty index.
    pub fn new() -> Self {
        let mut nodes = Slab::new();
        nodes.insert(Node::new(0, Key::Root));
        Index { nodes, len: 0 }
    }

    /// Subscriptions held.
    #[allow(dead_code)] // used by the tests
    pub fn len(&self) -> usize {
        self.len
    }

    /// Trie nodes held, the root included (for tests: pruning).
    #[allow(dead_code)] // used by the tests
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Add subscription `id` on `subject` (in queue group `queue`). `None` if the subject
    /// is not valid. The index copies the tokens it keeps, so `subject` may be a slice of
    /// a large read buffer.
    pub fn insert(&mut self, subject: &[u8], queue: Option<&[u8]>, id: T) -> Option<Loc> {
        if !valid_subject(subject) || queue.is_some_and(|q| q.is_empty()) {
            return None;
        }
        let mut node = 0;
        for t in subject.split(|&b| b == b'.') {
            node = match t {
                b"*" => match self.nodes[node].star {
                    Some(n) => n,
                    None => {
                        let n = self.nodes.insert(Node::new(node, Key::Star));
                        self.nodes[node].star = Some(n);
                        n
                    }
                },
                b">" => match self.nodes[node].gt {
                    Some(n) => n,
                    None => {
                        let n = self.nodes.insert(Node::new(node, Key::Gt));
                        self.nodes[node].gt = Some(n);
                        n
                    }
                },
                lit => match self.nodes[node].children.get(lit) {
                    Some(&n) => n,
                    None => {
                        let key = Bytes::copy_from_slice(lit);
                        let n = self
                            .nodes
                            .insert(Node::new(node, Key::Literal(key.clone())));
                        self.nodes[node].children.insert(key, n);
                        n
                    }
                },
            };
        }
        self.len += 1;
        let n = &mut self.nodes[node];
        Some(match queue {
            None => {
                n.plain.push(id);
                Loc {
                    node,
                    group: None,
                    pos: n.plain.len() - 1,
                }
            }
            Some(q) => {
                let g = match n.group_keys.get(q) {
                    Some(&k) => k,
                    None => {
                        let name = Bytes::copy_from_slice(q);
                        let k = n.groups.insert(Group {
                            name: name.clone(),
                            members: Vec::new(),
                        });
                        n.group_keys.insert(name, k);
                        k
                    }
                };
                let members = &mut n.groups[g].members;
                members.push(id);
                Loc {
                    node,
                    group: Some(g),
                    pos: members.len() - 1,
                }
            }
        })
    }

    /// Remove the subscription at `loc`. Returns the subscription that moved into its
    /// place, if any, with its new location: the caller must remember it.
    pub fn remove(&mut self, loc: Loc) -> Option<(T, Loc)> {
        let n = &mut self.nodes[loc.node];
        let list = match loc.group {
            None => &mut n.plain,
            Some(g) => &mut n.groups[g].members,
        };
        list.swap_remove(loc.pos);
        let moved = list.get(loc.pos).map(|&id| (id, loc));
        if let Some(g) = loc.group
            && n.groups[g].members.is_empty()
        {
            let group = n.groups.remove(g);
            n.group_keys.remove(&group.name);
        }
        self.len -= 1;
        self.prune(loc.node);
        moved
    }

    /// Remove empty nodes from `node` up towards the root.
    fn prune(&mut self, mut node: usize) {
        while node != 0 && self.nodes[node].is_empty() {
            let Node { parent, key, .. } = self.nodes.remove(node);
            let p = &mut self.nodes[parent];
            match key {
                Key::Literal(k) => {
                    p.children.remove(&k);
                }
                Key::Star => p.star = None,
                Key::Gt => p.gt = None,
                Key::Root => unreachable!("the root is never pruned"),
            }
            node = parent;
        }
    }

    /// Fill `out` with the subscriptions a publish to `subject` reaches: none if a token
    /// of `subject` is empty.
    pub fn match_into(&self, subject: &[u8], out: &mut Matches<T>) {
        out.clear();
        let mut tokens = std::mem::take(&mut out.tokens);
        tokens.clear();
        let mut start = 0;
        for (i, &b) in subject.iter().enumerate() {
            if b == b'.' {
                tokens.push((start, i));
                start = i + 1;
            }
        }
        tokens.push((start, subject.len()));
        if tokens.iter().all(|&(a, z)| a < z) {
            self.walk(0, subject, &tokens, out);
        }
        out.tokens = tokens;
    }

    fn walk(&self, node: usize, subject: &[u8], tokens: &[(usize, usize)], out: &mut Matches<T>) {
        let n = &self.nodes[node];
        let Some((&(a, z), rest)) = tokens.split_first() else {
            out.add_node(n);
            return;
        };
        // Literal before `*`, as nats-server orders its matches (the no-responders status
        // goes to the requester's first matching subscription).
        if let Some(gt) = n.gt {
            out.add_node(&self.nodes[gt]);
        }
        if let Some(&child) = n.children.get(&subject[a..z]) {
            self.walk(child, subject, rest, out);
        }
        if let Some(star) = n.star {
            self.walk(star, subject, rest, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(ix: &Index<u32>, subject: &str) -> (Vec<u32>, Vec<(String, Vec<u32>)>) {
        let mut m = Matches::default();
        ix.match_into(subject.as_bytes(), &mut m);
        let mut plain = m.plain.clone();
        plain.sort();
        let mut groups: Vec<_> = m
            .groups()
            .map(|(n, ms)| {
                let mut ms = ms.to_vec();
                ms.sort();
                (String::from_utf8(n.to_vec()).unwrap(), ms)
            })
            .collect();
        groups.sort();
        (plain, groups)
    }

    #[test]
    fn subject_validity() {
        for s in ["a", "a.b", "a.*", "*", ">", "a.>", "*.*.>", "a*b.c>"] {
            assert!(valid_subject(s.as_bytes()), "{s}");
        }
        for s in ["", ".", "a.", ".a", "a..b", ">.a", "a.>.b"] {
            assert!(!valid_subject(s.as_bytes()), "{s}");
        }
        assert!(valid_literal_subject(b"a.b"));
        assert!(!valid_literal_subject(b"a.*"));
        assert!(!valid_literal_subject(b"a.>"));
    }

    #[test]
    fn wildcards() {
        let mut ix = Index::new();
        ix.insert(b"foo.bar", None, 1).unwrap();
        ix.insert(b"foo.*", None, 2).unwrap();
        ix.insert(b"foo.>", None, 3).unwrap();
        ix.insert(b">", None, 4).unwrap();
        ix.insert(b"*.bar", None, 5).unwrap();
        ix.insert(b"foo.bar.baz", None, 6).unwrap();
        ix.insert(b"*", None, 7).unwrap();
        assert_eq!(matched(&ix, "foo.bar").0, vec![1, 2, 3, 4, 5]);
        assert_eq!(matched(&ix, "foo.baz").0, vec![2, 3, 4]);
        assert_eq!(matched(&ix, "foo.bar.baz").0, vec![3, 4, 6]);
        assert_eq!(matched(&ix, "foo").0, vec![4, 7]);
        assert_eq!(matched(&ix, "x.y.z").0, vec![4]);
        // A subject with an empty token matches nothing, wildcards included.
        for s in ["foo..bar", "foo.", ".bar", ".", "", "foo.bar."] {
            assert_eq!(matched(&ix, s), (vec![], vec![]), "{s:?}");
        }
        assert!(ix.insert(b"a..b", None, 9).is_none());
        assert!(ix.insert(b"a.>.b", None, 9).is_none());
    }

    #[test]
    fn queue_groups_merge_by_name_across_nodes() {
        let mut ix = Index::new();
        ix.insert(b"a.b", Some(b"q"), 1).unwrap();
        ix.insert(b"a.*", Some(b"q"), 2).unwrap();
        ix.insert(b"a.b", Some(b"r"), 3).unwrap();
        ix.insert(b"a.b", None, 4).unwrap();
        let (plain, groups) = matched(&ix, "a.b");
        assert_eq!(plain, vec![4]);
        assert_eq!(
            groups,
            vec![("q".into(), vec![1, 2]), ("r".into(), vec![3])]
        );
        // The scratch is reused without stale groups.
        let (_, groups) = matched(&ix, "a.c");
        assert_eq!(groups, vec![("q".into(), vec![2])]);
        // Merged across three nodes, in a scratch indexed by name on the way.
        ix.insert(b">", Some(b"r"), 5).unwrap();
        ix.insert(b">", Some(b"s"), 6).unwrap();
        let mut m = Matches::default();
        for _ in 0..2 {
            ix.match_into(b"a.b", &mut m);
            let mut groups: Vec<(Bytes, Vec<u32>)> = m
                .groups()
                .map(|(n, ms)| {
                    let mut ms = ms.to_vec();
                    ms.sort();
                    (n.clone(), ms)
                })
                .collect();
            groups.sort();
            assert_eq!(
                groups,
                vec![
                    (Bytes::from("q"), vec![1, 2]),
                    (Bytes::from("r"), vec![3, 5]),
                    (Bytes::from("s"), vec![6])
                ]
            );
            assert_eq!(m.plain, vec![4]);
        }
    }

    #[test]
    fn remove_keeps_locations_right_and_prunes() {
        let mut ix: Index<u32> = Index::new();
        let mut locs: HashMap<u32, Loc> = HashMap::new();
        let subjects = ["a.b.c", "a.b.c", "a.*.c", "a.>", "x", "a.b.c"];
        for (i, s) in subjects.iter().enumerate() {
            let q: Option<&[u8]> = if i % 2 == 0 { None } else { Some(b"g") };
            locs.insert(i as u32, ix.insert(s.as_bytes(), q, i as u32).unwrap());
        }
        for id in [0u32, 3, 1, 5, 2, 4] {
            let loc = locs.remove(&id).unwrap();
            if let Some((moved, new)) = ix.remove(loc) {
                locs.insert(moved, new);
            }
            let mut all: Vec<u32> = Vec::new();
            for s in ["a.b.c", "a.x.c", "a.q", "x"] {
                let (p, g) = matched(&ix, s);
                all.extend(p);
                all.extend(g.into_iter().flat_map(|(_, m)| m));
            }
            all.sort();
            all.dedup();
            let mut want: Vec<u32> = locs.keys().copied().collect();
            want.sort();
            assert_eq!(all, want, "after removing {id}");
        }
        assert_eq!(ix.len(), 0);
        assert_eq!(ix.node_count(), 1, "all nodes but the root pruned");
    }

    #[test]
    fn many_subscribers_on_one_subject_reach_exactly_their_subscribers() {
        let mut ix = Index::new();
        for i in 0..5000u32 {
            ix.insert(format!("other.{i}").as_bytes(), None, i).unwrap();
        }
        for i in 0..1000u32 {
            ix.insert(b"fan.out", None, 10_000 + i).unwrap();
        }
        let mut m = Matches::default();
        ix.match_into(b"fan.out", &mut m);
        assert_eq!(m.plain.len(), 1000);
        ix.match_into(b"other.17", &mut m);
        assert_eq!(m.plain, vec![17]);
    }
}
