//! The NATS client protocol (client to server), and the leaf-node protocol (hub to leaf),
//! as a sans-IO parser.
//!
//! Bytes go in with [`Parser::push`] in whatever pieces the network delivers (whole
//! reads, halves of a control line, one byte at a time); complete operations come out of
//! [`Parser::next`]. Nothing here touches a socket or a clock.
//!
//! * Operation names are case-insensitive (`pub`, `Pub`, `PUB`); arguments are separated
//!   by spaces or tabs; lines end with CRLF (a bare LF is accepted, as nats-server does).
//! * A message payload is handed out as the `Bytes` the network delivered when it arrived
//!   in one piece (no copy), followed by its CRLF so it can be forwarded as it is; a
//!   payload split across reads is collected once into a buffer of exactly its size.
//! * Bad input is an error that ends the connection, with the `-ERR` nats-server sends:
//!   an unknown operation is caught at its first wrong byte, even before the line ends; a
//!   control line over [`MAX_CONTROL_LINE`] bytes is caught before it is complete.
//!   After an error the parser only repeats it.
//! * `HPUB` is refused (the connection ends, without an `-ERR`, as nats-server 2.9 does)
//!   when the client has not declared headers support: see [`Parser::allow_headers`].
//! * Memory per connection: nothing while idle; an incomplete control line (at most
//!   [`MAX_CONTROL_LINE`] bytes) or an incomplete payload (at most `max_payload`).
//! * [`Parser::leaf`] reads what a nats-server hub sends its leaf node instead: `INFO`,
//!   `PING`/`PONG`, `+OK`/`-ERR`, interest (`LS+ subject [queue weight]`, `LS- subject
//!   [queue]`) and messages (`LMSG`/`HMSG subject [reply | + reply queue... | | queue...]
//!   [header_len] len`, the queue groups the hub chose this leaf for). Client operations
//!   are unknown operations there, and leaf operations are unknown to a client parser.

use std::collections::VecDeque;
use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

/// Longest control line accepted, in bytes (nats-server's `max_control_line` default).
pub const MAX_CONTROL_LINE: usize = 4096;

/// One operation sent by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `CONNECT {json}`: the JSON text.
    Connect(Bytes),
    /// `PUB subject [reply] len` and its payload.
    Pub {
        /// Where to publish.
        subject: Bytes,
        /// Where replies should go.
        reply: Option<Bytes>,
        /// The payload followed by its CRLF, as on the wire.
        data: Bytes,
    },
    /// `HPUB subject [reply] header_len total_len`, headers and payload.
    HPub {
        /// Where to publish.
        subject: Bytes,
        /// Where replies should go.
        reply: Option<Bytes>,
        /// Length of the header block at the start of `data`.
        header_len: usize,
        /// Headers, then the payload, then CRLF.
        data: Bytes,
    },
    /// `SUB subject [queue] sid`.
    Sub {
        /// Subject, possibly with wildcards.
        subject: Bytes,
        /// Queue group.
        queue: Option<Bytes>,
        /// The client's id for the subscription, echoed in every `MSG`.
        sid: Bytes,
    },
    /// `UNSUB sid [max_msgs]`.
    Unsub {
        /// The subscription.
        sid: Bytes,
        /// Unsubscribe once this many messages were delivered in total. A max that is not
        /// 1 to 9 decimal digits (`-1`, `x`, `1234567890`) is `Some(0)`: unsubscribe now,
        /// as nats-server reads it.
        max: Option<u64>,
    },
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK` (clients do not normally send it; accepted and ignored).
    Ok,
    /// `-ERR text` (accepted and ignored).
    Err(Bytes),
    /// `INFO {json}` (accepted and ignored).
    Info(Bytes),
    /// Leaf link: `LS+ subject [queue weight]`, interest of the hub's side. A queue
    /// interest comes again with its new weight when the number of members changes.
    LeafSub {
        /// Subject, possibly with wildcards.
        subject: Bytes,
        /// Queue group and its weight (members on the hub's side, at least 1).
        queue: Option<(Bytes, u32)>,
    },
    /// Leaf link: `LS- subject [queue]`, interest gone.
    LeafUnsub {
        /// Subject.
        subject: Bytes,
        /// Queue group.
        queue: Option<Bytes>,
    },
    /// Leaf link: `LMSG`, or `HMSG` with headers, a message from the hub's side.
    LeafMsg {
        /// Subject.
        subject: Bytes,
        /// Where replies should go.
        reply: Option<Bytes>,
        /// The queue groups the hub picked this leaf for (empty: plain interest only).
        queues: Vec<Bytes>,
        /// Length of the header block at the start of `data` (`HMSG`).
        header_len: Option<usize>,
        /// Headers, payload and CRLF, as on the wire.
        data: Bytes,
    },
}

/// Input the protocol does not allow. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not an operation a client may send.
    UnknownOp,
    /// A control line longer than the maximum.
    ControlLineTooLong,
    /// A `PUB`/`HPUB` announced a payload above the maximum.
    PayloadTooLarge {
        /// Announced size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// The arguments of a known operation are malformed (missing, extra, not a number).
    Malformed(&'static str),
    /// `HPUB` from a client that did not declare headers support.
    HeadersNotSupported,
}

impl ParseError {
    /// The line sent to the client before the connection is closed (empty: nothing is
    /// sent, as nats-server sends nothing for a `HPUB` without headers support).
    pub fn wire(&self) -> &'static [u8] {
        match self {
            ParseError::HeadersNotSupported => b"",
            ParseError::UnknownOp => b"-ERR 'Unknown Protocol Operation'\r\n",
            ParseError::ControlLineTooLong => b"-ERR 'Maximum Control Line Exceeded'\r\n",
            ParseError::PayloadTooLarge { .. } => b"-ERR 'Maximum Payload Violation'\r\n",
            ParseError::Malformed(_) => b"-ERR 'Parser Error'\r\n",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::UnknownOp => f.write_str("unknown protocol operation"),
            ParseError::ControlLineTooLong => {
                write!(f, "control line longer than {MAX_CONTROL_LINE} bytes")
            }
            ParseError::PayloadTooLarge { size, max } => {
                write!(f, "payload of {size} bytes over the maximum of {max}")
            }
            ParseError::Malformed(what) => write!(f, "malformed {what}"),
            ParseError::HeadersNotSupported => f.write_str("message headers not supported"),
        }
    }
}

/// What may follow an operation's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sep {
    /// At least one space or tab, then arguments.
    Required,
    /// Arguments, with or without a space before them.
    Optional,
    /// Nothing that matters: the rest of the line is ignored (as nats-server does).
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Connect,
    Pub,
    HPub,
    Sub,
    Unsub,
    Ping,
    Pong,
    Ok,
    Err,
    Info,
    LsAdd,
    LsDel,
    LMsg,
    HMsg,
}

type OpTable = [(&'static [u8], Name, Sep)];

/// The operations a client may send. No name is a prefix of another.
const OPS: [(&[u8], Name, Sep); 10] = [
    (b"CONNECT", Name::Connect, Sep::Optional),
    (b"PUB", Name::Pub, Sep::Required),
    (b"HPUB", Name::HPub, Sep::Required),
    (b"SUB", Name::Sub, Sep::Required),
    (b"UNSUB", Name::Unsub, Sep::Required),
    (b"PING", Name::Ping, Sep::Ignored),
    (b"PONG", Name::Pong, Sep::Ignored),
    (b"+OK", Name::Ok, Sep::Ignored),
    (b"-ERR", Name::Err, Sep::Required),
    (b"INFO", Name::Info, Sep::Optional),
];

/// The operations a hub sends its leaf node. No name is a prefix of another.
const LEAF_OPS: [(&[u8], Name, Sep); 9] = [
    (b"INFO", Name::Info, Sep::Optional),
    (b"PING", Name::Ping, Sep::Ignored),
    (b"PONG", Name::Pong, Sep::Ignored),
    (b"+OK", Name::Ok, Sep::Ignored),
    (b"-ERR", Name::Err, Sep::Required),
    (b"LS+", Name::LsAdd, Sep::Required),
    (b"LS-", Name::LsDel, Sep::Required),
    (b"LMSG", Name::LMsg, Sep::Required),
    (b"HMSG", Name::HMsg, Sep::Required),
];

/// Most arguments a leaf message line may have (subject, reply marker and reply, sizes,
/// and the queue groups): beyond it the line is malformed.
const MAX_LEAF_ARGS: usize = 64;

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Whether `p`, the start of a line whose end has not arrived, can still become a known
/// operation. nats-server rejects a wrong byte as soon as it sees it; so do we.
fn prefix_ok(ops: &OpTable, p: &[u8]) -> bool {
    ops.iter().any(|&(name, _, sep)| {
        let n = name.len();
        if p.len() <= n {
            p.eq_ignore_ascii_case(&name[..p.len()])
        } else {
            p[..n].eq_ignore_ascii_case(name) && (sep != Sep::Required || is_ws(p[n]))
        }
    })
}

/// A `PUB`/`HPUB` whose control line was read, waiting for its payload.
#[derive(Debug, Clone)]
struct Pending {
    subject: Bytes,
    reply: Option<Bytes>,
    /// Header length for `HPUB`, `None` for `PUB`.
    header_len: Option<usize>,
    /// Payload length (headers included), without the CRLF.
    size: usize,
    /// A leaf message (`LMSG`/`HMSG`): the queue groups it is for.
    leaf: Option<Vec<Bytes>>,
}

/// The parser of one connection. See the [module docs](self).
#[derive(Debug)]
pub struct Parser {
    /// An operation carried over from earlier pushes: part of a control line, or part of a
    /// payload (then `pending` is set). Empty, without an allocation, otherwise.
    buf: BytesMut,
    /// The pushed bytes being consumed.
    chunk: Bytes,
    /// Bytes pushed while `chunk` was not consumed yet (a client whose processing
    /// yielded or was held back goes on reading a turn's worth), in order: taken up as
    /// `chunk` runs out, without copying them together.
    queued: VecDeque<Bytes>,
    pending: Option<Pending>,
    max_payload: usize,
    max_control: usize,
    /// Whether `HPUB` is accepted.
    headers: bool,
    /// The operations understood: [`OPS`] or [`LEAF_OPS`].
    ops: &'static OpTable,
    failed: Option<ParseError>,
}

impl Parser {
    /// A parser that accepts payloads up to `max_payload` bytes, and `HPUB` (see
    /// [`allow_headers`](Parser::allow_headers)).
    pub fn new(max_payload: usize) -> Parser {
        Parser {
            buf: BytesMut::new(),
            chunk: Bytes::new(),
            queued: VecDeque::new(),
            pending: None,
            max_payload,
            max_control: MAX_CONTROL_LINE,
            headers: true,
            ops: &OPS,
            failed: None,
        }
    }

    /// A parser of what a hub sends its leaf node (see the [module docs](self)), with
    /// payloads up to `max_payload` bytes.
    pub fn leaf(max_payload: usize) -> Parser {
        Parser {
            ops: &LEAF_OPS,
            ..Parser::new(max_payload)
        }
    }

    /// Accept `HPUB` from now on, or refuse it with [`ParseError::HeadersNotSupported`]
    /// (the client's CONNECT decides; operations already returned are not affected).
    pub fn allow_headers(&mut self, on: bool) {
        self.headers = on;
    }

    /// Hand over bytes from the network. Pushing before [`next`](Parser::next) returned
    /// `Ok(None)` queues them behind what is left, without a copy.
    pub fn push(&mut self, data: Bytes) {
        if self.failed.is_some() || data.is_empty() {
            return;
        }
        if self.chunk.is_empty() && self.queued.is_empty() {
            self.chunk = data;
        } else {
            self.queued.push_back(data);
        }
    }

    /// The next complete operation; `Ok(None)` when more bytes are needed. An error is
    /// final: the connection must end (send [`ParseError::wire`] first).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Op>, ParseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let res = loop {
            match self.step() {
                // `step` wants more only once `chunk` is used up.
                Ok(None) => match self.queued.pop_front() {
                    Some(next) => self.chunk = next,
                    None => break Ok(None),
                },
                res => break res,
            }
        };
        if let Err(e) = &res {
            self.failed = Some(e.clone());
            self.buf = BytesMut::new();
            self.chunk = Bytes::new();
            self.queued = VecDeque::new();
            self.pending = None;
        }
        res
    }

    /// Bytes held for an incomplete operation (for tests and accounting).
    #[allow(dead_code)] // used by the tests
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.chunk.len() + self.queued.iter().map(Bytes::len).sum::<usize>()
    }

    fn step(&mut self) -> Result<Option<Op>, ParseError> {
        loop {
            if let Some(p) = &self.pending {
                let need = p.size + 2;
                if self.buf.is_empty() && self.chunk.len() >= need {
                    // The whole payload is in this read: hand it out without a copy.
                    let data = self.chunk.split_to(need);
                    return self.finish(data).map(Some);
                }
                if self.chunk.is_empty() {
                    return Ok(None);
                }
                if self.buf.is_empty() {
                    self.buf.reserve(need); // once, for the whole payload
                }
                let take = (need - self.buf.len()).min(self.chunk.len());
                self.buf.extend_from_slice(&self.chunk[..take]);
                self.chunk.advance(take);
                if self.buf.len() < need {
                    return Ok(None);
                }
                let data = std::mem::take(&mut self.buf).freeze();
                return self.finish(data).map(Some);
            }

            // A control line.
            if self.chunk.is_empty() {
                return Ok(None);
            }
            let line = if self.buf.is_empty() {
                match memchr::memchr(b'\n', &self.chunk) {
                    Some(i) => self.chunk.split_to(i + 1),
                    None => {
                        self.check_partial(&self.chunk)?;
                        self.buf.extend_from_slice(&self.chunk);
                        self.chunk.clear();
                        return Ok(None);
                    }
                }
            } else {
                // Complete the line carried over, taking from the new bytes only its rest.
                match memchr::memchr(b'\n', &self.chunk) {
                    Some(i) => {
                        self.buf.extend_from_slice(&self.chunk[..=i]);
                        self.chunk.advance(i + 1);
                        std::mem::take(&mut self.buf).freeze()
                    }
                    None => {
                        self.buf.extend_from_slice(&self.chunk);
                        self.chunk.clear();
                        self.check_partial(&self.buf)?;
                        return Ok(None);
                    }
                }
            };
            if let Some(op) = self.line(line)? {
                return Ok(Some(op));
            }
            // A PUB/HPUB line: its payload may be right behind it.
        }
    }

    fn check_partial(&self, p: &[u8]) -> Result<(), ParseError> {
        if !prefix_ok(self.ops, p) {
            return Err(ParseError::UnknownOp);
        }
        // +2: room for the CRLF still to come.
        if p.len() > self.max_control + 2 {
            return Err(ParseError::ControlLineTooLong);
        }
        Ok(())
    }

    /// A whole control line, `\n` included.
    fn line(&mut self, line: Bytes) -> Result<Option<Op>, ParseError> {
        let mut end = line.len() - 1;
        if end > 0 && line[end - 1] == b'\r' {
            end -= 1;
        }
        let l = line.slice(..end);
        let Some(&(name, op, sep)) = self.ops.iter().find(|(name, _, sep)| {
            let n = name.len();
            l.len() >= n
                && l[..n].eq_ignore_ascii_case(name)
                && (*sep != Sep::Required || (l.len() > n && is_ws(l[n])))
        }) else {
            return Err(ParseError::UnknownOp);
        };
        if l.len() > self.max_control {
            return Err(ParseError::ControlLineTooLong);
        }
        let rest = l.slice(name.len()..);
        if sep == Sep::Ignored {
            return Ok(Some(match op {
                Name::Ping => Op::Ping,
                Name::Pong => Op::Pong,
                _ => Op::Ok,
            }));
        }
        if matches!(op, Name::LsAdd | Name::LsDel | Name::LMsg | Name::HMsg) {
            return self.leaf_line(op, &rest);
        }
        let mut args = [Bytes::new(), Bytes::new(), Bytes::new(), Bytes::new()];
        let nargs = split_args(&rest, &mut args);
        let arg = |i: usize| args[i].clone();
        match op {
            Name::Connect => Ok(Some(Op::Connect(trim(&rest)))),
            Name::Info => Ok(Some(Op::Info(trim(&rest)))),
            Name::Err => Ok(Some(Op::Err(trim(&rest)))),
            Name::Pub => {
                let (subject, reply, size) = match nargs {
                    2 => (arg(0), None, &args[1]),
                    3 => (arg(0), Some(arg(1)), &args[2]),
                    _ => return Err(ParseError::Malformed("PUB arguments")),
                };
                let size = parse_size(size).ok_or(ParseError::Malformed("PUB size"))?;
                self.expect_payload(subject, reply, None, size)
            }
            Name::HPub => {
                if !self.headers {
                    return Err(ParseError::HeadersNotSupported);
                }
                let (subject, reply, hdr, size) = match nargs {
                    3 => (arg(0), None, &args[1], &args[2]),
                    4 => (arg(0), Some(arg(1)), &args[2], &args[3]),
                    _ => return Err(ParseError::Malformed("HPUB arguments")),
                };
                let hdr = parse_size(hdr).ok_or(ParseError::Malformed("HPUB header size"))?;
                let size = parse_size(size).ok_or(ParseError::Malformed("HPUB size"))?;
                if hdr > size {
                    return Err(ParseError::Malformed("HPUB header size above total size"));
                }
                self.expect_payload(subject, reply, Some(hdr), size)
            }
            Name::Sub => match nargs {
                2 => Ok(Some(Op::Sub {
                    subject: arg(0),
                    queue: None,
                    sid: arg(1),
                })),
                3 => Ok(Some(Op::Sub {
                    subject: arg(0),
                    queue: Some(arg(1)),
                    sid: arg(2),
                })),
                _ => Err(ParseError::Malformed("SUB arguments")),
            },
            Name::Unsub => match nargs {
                1 => Ok(Some(Op::Unsub {
                    sid: arg(0),
                    max: None,
                })),
                2 => Ok(Some(Op::Unsub {
                    sid: arg(0),
                    // nats-server: anything but 1 to 9 digits is -1, "unsubscribe now".
                    max: Some(parse_size(&args[1]).unwrap_or(0) as u64),
                })),
                _ => Err(ParseError::Malformed("UNSUB arguments")),
            },
            Name::Ping
            | Name::Pong
            | Name::Ok
            | Name::LsAdd
            | Name::LsDel
            | Name::LMsg
            | Name::HMsg => unreachable!("handled above"),
        }
    }

    /// The arguments of a leaf operation (see the [module docs](self)).
    fn leaf_line(&mut self, op: Name, rest: &Bytes) -> Result<Option<Op>, ParseError> {
        let mut args: Vec<Bytes> = Vec::new();
        let mut start = None;
        for (i, &b) in rest.iter().enumerate() {
            if is_ws(b) {
                if let Some(st) = start.take() {
                    args.push(rest.slice(st..i));
                }
            } else if start.is_none() {
                start = Some(i);
            }
        }
        if let Some(st) = start {
            args.push(rest.slice(st..));
        }
        if args.len() > MAX_LEAF_ARGS {
            return Err(ParseError::Malformed("leaf arguments"));
        }
        match op {
            Name::LsAdd => match args.len() {
                1 => Ok(Some(Op::LeafSub {
                    subject: args.swap_remove(0),
                    queue: None,
                })),
                3 => {
                    let weight = parse_size(&args[2])
                        .and_then(|w| u32::try_from(w).ok())
                        .filter(|&w| w > 0)
                        .ok_or(ParseError::Malformed("LS+ weight"))?;
                    args.truncate(2);
                    let queue = args.pop().map(|q| (q, weight));
                    Ok(Some(Op::LeafSub {
                        subject: args.swap_remove(0),
                        queue,
                    }))
                }
                _ => Err(ParseError::Malformed("LS+ arguments")),
            },
            Name::LsDel => match args.len() {
                // nats-server sends `LS- subject queue` for a queue interest; a weight
                // after it is tolerated.
                1..=3 => {
                    args.truncate(2);
                    let queue = if args.len() == 2 { args.pop() } else { None };
                    Ok(Some(Op::LeafUnsub {
                        subject: args.swap_remove(0),
                        queue,
                    }))
                }
                _ => Err(ParseError::Malformed("LS- arguments")),
            },
            _ => {
                let headers = op == Name::HMsg;
                let sizes = if headers { 2 } else { 1 };
                if args.len() < 1 + sizes {
                    return Err(ParseError::Malformed("LMSG arguments"));
                }
                let size =
                    parse_size(&args[args.len() - 1]).ok_or(ParseError::Malformed("LMSG size"))?;
                let hdr = if headers {
                    let h = parse_size(&args[args.len() - 2])
                        .ok_or(ParseError::Malformed("leaf HMSG header size"))?;
                    if h > size {
                        return Err(ParseError::Malformed(
                            "leaf HMSG header size above total size",
                        ));
                    }
                    Some(h)
                } else {
                    None
                };
                args.truncate(args.len() - sizes);
                let mut it = args.into_iter();
                let subject = it.next().unwrap_or_default();
                let mid: Vec<Bytes> = it.collect();
                let (reply, queues) = match mid.as_slice() {
                    [] => (None, Vec::new()),
                    [reply] => (Some(reply.clone()), Vec::new()),
                    [mark, reply, queues @ ..] if &mark[..] == b"+" && !queues.is_empty() => {
                        (Some(reply.clone()), queues.to_vec())
                    }
                    [mark, queues @ ..] if &mark[..] == b"|" => (None, queues.to_vec()),
                    _ => return Err(ParseError::Malformed("LMSG reply indicator")),
                };
                if size > self.max_payload {
                    return Err(ParseError::PayloadTooLarge {
                        size,
                        max: self.max_payload,
                    });
                }
                self.pending = Some(Pending {
                    subject,
                    reply,
                    header_len: hdr,
                    size,
                    leaf: Some(queues),
                });
                Ok(None)
            }
        }
    }

    fn expect_payload(
        &mut self,
        subject: Bytes,
        reply: Option<Bytes>,
        header_len: Option<usize>,
        size: usize,
    ) -> Result<Option<Op>, ParseError> {
        if size > self.max_payload {
            return Err(ParseError::PayloadTooLarge {
                size,
                max: self.max_payload,
            });
        }
        self.pending = Some(Pending {
            subject,
            reply,
            header_len,
            size,
            leaf: None,
        });
        Ok(None)
    }

    /// `data` is the payload and the two bytes after it, which must be CRLF.
    fn finish(&mut self, data: Bytes) -> Result<Op, ParseError> {
        let p = self.pending.take().expect("a payload is pending");
        if &data[p.size..] != b"\r\n" {
            // nats-server: a payload not followed by CRLF is an unknown operation.
            return Err(ParseError::UnknownOp);
        }
        if let Some(queues) = p.leaf {
            return Ok(Op::LeafMsg {
                subject: p.subject,
                reply: p.reply,
                queues,
                header_len: p.header_len,
                data,
            });
        }
        Ok(match p.header_len {
            None => Op::Pub {
                subject: p.subject,
                reply: p.reply,
                data,
            },
            Some(header_len) => Op::HPub {
                subject: p.subject,
                reply: p.reply,
                header_len,
                data,
            },
        })
    }
}

/// Split on runs of spaces and tabs into at most `out.len()` pieces; returns how many
/// arguments there were (more than `out.len()` means too many).
fn split_args(s: &Bytes, out: &mut [Bytes; 4]) -> usize {
    let mut n = 0;
    let mut start = None;
    for (i, &b) in s.iter().enumerate() {
        if is_ws(b) || b == b'\r' {
            if let Some(st) = start.take() {
                if n < out.len() {
                    out[n] = s.slice(st..i);
                }
                n += 1;
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(st) = start {
        if n < out.len() {
            out[n] = s.slice(st..);
        }
        n += 1;
    }
    n
}

fn trim(s: &Bytes) -> Bytes {
    let a = s.iter().position(|&b| !is_ws(b)).unwrap_or(s.len());
    let z = s.iter().rposition(|&b| !is_ws(b)).map_or(a, |i| i + 1);
    s.slice(a..z.max(a))
}

/// A payload size: 1 to 9 decimal digits (nats-server's limit), nothing else.
fn parse_size(d: &[u8]) -> Option<usize> {
    if d.is_empty() || d.len() > 9 {
        return None;
    }
    d.iter().try_fold(0usize, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + (b - b'0') as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(p: &mut Parser, input: &[u8]) -> Result<Vec<Op>, ParseError> {
        p.push(Bytes::copy_from_slice(input));
        let mut ops = Vec::new();
        while let Some(op) = p.next()? {
            ops.push(op);
        }
        Ok(ops)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn every_operation() {
        let mut p = Parser::new(1024);
        let ops = parse_all(
            &mut p,
            b"CONNECT {\"verbose\":false}\r\nsub foo.* q 1\r\nSUB bar 2\r\nPUB foo.x 5\r\nhello\r\n\
              pub foo.y r.1 0\r\n\r\nHPUB h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nUNSUB 1 10\r\nunsub 2\r\n\
              PING\r\npong\r\n+OK\r\n-ERR 'x'\r\nINFO {}\r\n",
        )
        .unwrap();
        assert_eq!(
            ops,
            vec![
                Op::Connect(b("{\"verbose\":false}")),
                Op::Sub {
                    subject: b("foo.*"),
                    queue: Some(b("q")),
                    sid: b("1")
                },
                Op::Sub {
                    subject: b("bar"),
                    queue: None,
                    sid: b("2")
                },
                Op::Pub {
                    subject: b("foo.x"),
                    reply: None,
                    data: b("hello\r\n")
                },
                Op::Pub {
                    subject: b("foo.y"),
                    reply: Some(b("r.1")),
                    data: b("\r\n")
                },
                Op::HPub {
                    subject: b("h"),
                    reply: None,
                    header_len: 12,
                    data: b("NATS/1.0\r\n\r\nhi\r\n")
                },
                Op::Unsub {
                    sid: b("1"),
                    max: Some(10)
                },
                Op::Unsub {
                    sid: b("2"),
                    max: None
                },
                Op::Ping,
                Op::Pong,
                Op::Ok,
                Op::Err(b("'x'")),
                Op::Info(b("{}")),
            ]
        );
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn tabs_and_runs_of_spaces_separate_arguments() {
        let mut p = Parser::new(1024);
        let ops = parse_all(&mut p, b"PUB\t foo \t 3 \r\nabc\r\n").unwrap();
        assert_eq!(
            ops,
            vec![Op::Pub {
                subject: b("foo"),
                reply: None,
                data: b("abc\r\n")
            }]
        );
    }

    #[test]
    fn unknown_operations_are_caught_at_the_first_wrong_byte() {
        for input in [
            &b"FOO"[..],
            b"PUBX",
            b"PUB\r\n",
            b"\r\n",
            b"MSG foo 1 2\r\n",
            b"x",
        ] {
            let mut p = Parser::new(1024);
            assert_eq!(
                parse_all(&mut p, input),
                Err(ParseError::UnknownOp),
                "{input:?}"
            );
            // The error is final.
            p.push(b("PING\r\n"));
            assert_eq!(p.next(), Err(ParseError::UnknownOp));
        }
        // A valid prefix waits for more.
        let mut p = Parser::new(1024);
        assert_eq!(parse_all(&mut p, b"UNSU"), Ok(vec![]));
        assert_eq!(
            parse_all(&mut p, b"B 1\r\n"),
            Ok(vec![Op::Unsub {
                sid: b("1"),
                max: None
            }])
        );
    }

    #[test]
    fn limits() {
        let mut p = Parser::new(10);
        assert_eq!(
            parse_all(&mut p, b"PUB foo 11\r\n"),
            Err(ParseError::PayloadTooLarge { size: 11, max: 10 })
        );
        let mut p = Parser::new(10);
        assert!(parse_all(&mut p, b"PUB foo 10\r\n0123456789\r\n").is_ok());

        // A control line that never ends is refused before it is complete.
        let mut p = Parser::new(10);
        let mut long = b"SUB ".to_vec();
        long.resize(MAX_CONTROL_LINE + 10, b'a');
        assert_eq!(
            parse_all(&mut p, &long),
            Err(ParseError::ControlLineTooLong)
        );
        // One just at the limit is fine.
        let mut p = Parser::new(10);
        let mut ok = b"SUB ".to_vec();
        ok.resize(MAX_CONTROL_LINE - 2, b'a');
        ok.extend_from_slice(b" 1\r\n");
        assert_eq!(parse_all(&mut p, &ok).map(|v| v.len()), Ok(1));
    }

    #[test]
    fn malformed_arguments() {
        for input in [
            &b"PUB foo\r\n"[..],
            b"PUB foo bar baz 1\r\n",
            b"PUB foo x\r\n",
            b"PUB foo -1\r\n",
            b"PUB foo 1234567890\r\n",
            b"HPUB foo 5 4\r\n",
            b"HPUB foo 4\r\n",
            b"SUB foo\r\n",
            b"SUB a b c d\r\n",
            b"UNSUB\t\r\n",
            b"UNSUB 1 2 3\r\n",
        ] {
            let mut p = Parser::new(1 << 20);
            assert!(
                matches!(parse_all(&mut p, input), Err(ParseError::Malformed(_))),
                "{input:?}"
            );
        }
    }

    #[test]
    fn unsub_with_a_max_that_is_not_1_to_9_digits_means_now() {
        for (input, max) in [
            (&b"UNSUB 1 -1\r\n"[..], 0),
            (b"UNSUB 1 x\r\n", 0),
            (b"UNSUB 1 1234567890\r\n", 0),
            (b"UNSUB 1 0\r\n", 0),
            (b"UNSUB 1 999999999\r\n", 999_999_999),
        ] {
            let mut p = Parser::new(1024);
            assert_eq!(
                parse_all(&mut p, input),
                Ok(vec![Op::Unsub {
                    sid: b("1"),
                    max: Some(max)
                }]),
                "{input:?}"
            );
        }
    }

    #[test]
    fn leaf_operations_as_nats_server_2_9_sends_them() {
        // The forms seen between two nats-server 2.9.10 (see the module docs).
        let mut p = Parser::leaf(1024);
        let ops = parse_all(
            &mut p,
            b"INFO {\"headers\":true}\r\nLS+ lf.down.*\r\nLS+ lf.q workers 3\r\n\
              LS- lf.down.*\r\nLS- lf.q workers\r\nLMSG a 2\r\nhi\r\nLMSG a r.1 2\r\nhi\r\n\
              LMSG a + r.1 g1 g2 2\r\nhi\r\nLMSG a | g1 0\r\n\r\n\
              HMSG h + r g 12 14\r\nNATS/1.0\r\n\r\nhi\r\nHMSG h 12 12\r\nNATS/1.0\r\n\r\n\r\n\
              PING\r\nPONG\r\n-ERR 'x'\r\n",
        )
        .unwrap();
        let msg =
            |subject: &str, reply: Option<&str>, queues: &[&str], hl, data: &str| Op::LeafMsg {
                subject: b(subject),
                reply: reply.map(b),
                queues: queues.iter().map(|q| b(q)).collect(),
                header_len: hl,
                data: b(data),
            };
        assert_eq!(
            ops,
            vec![
                Op::Info(b("{\"headers\":true}")),
                Op::LeafSub {
                    subject: b("lf.down.*"),
                    queue: None
                },
                Op::LeafSub {
                    subject: b("lf.q"),
                    queue: Some((b("workers"), 3))
                },
                Op::LeafUnsub {
                    subject: b("lf.down.*"),
                    queue: None
                },
                Op::LeafUnsub {
                    subject: b("lf.q"),
                    queue: Some(b("workers"))
                },
                msg("a", None, &[], None, "hi\r\n"),
                msg("a", Some("r.1"), &[], None, "hi\r\n"),
                msg("a", Some("r.1"), &["g1", "g2"], None, "hi\r\n"),
                msg("a", None, &["g1"], None, "\r\n"),
                msg("h", Some("r"), &["g"], Some(12), "NATS/1.0\r\n\r\nhi\r\n"),
                msg("h", None, &[], Some(12), "NATS/1.0\r\n\r\n\r\n"),
                Op::Ping,
                Op::Pong,
                Op::Err(b("'x'")),
            ]
        );
    }

    #[test]
    fn leaf_and_client_operations_do_not_mix_and_bad_leaf_lines_are_errors() {
        for op in [
            "PUB a 1\r\n",
            "SUB a 1\r\n",
            "CONNECT {}\r\n",
            "HPUB a 0 0\r\n",
        ] {
            let mut p = Parser::leaf(1024);
            assert_eq!(
                parse_all(&mut p, op.as_bytes()),
                Err(ParseError::UnknownOp),
                "{op}"
            );
        }
        for op in ["LS+ a\r\n", "LMSG a 1\r\n", "LS- a\r\n"] {
            let mut p = Parser::new(1024);
            assert_eq!(
                parse_all(&mut p, op.as_bytes()),
                Err(ParseError::UnknownOp),
                "{op}"
            );
        }
        let many_queues = format!("LMSG a |{} 0\r\n", " q".repeat(MAX_LEAF_ARGS));
        for bad in [
            "LS+ \r\n",
            "LS+ a q\r\n",
            "LS+ a q 0\r\n",
            "LS+ a q x\r\n",
            "LS+ a q 1 2\r\n",
            "LS- a q 1 2\r\n",
            "LMSG a\r\n",
            "LMSG a x y 2\r\n",
            "LMSG a + r 2\r\n",
            "LMSG a r x\r\n",
            "HMSG a 5 3\r\n",
            "HMSG a 3\r\n",
            &many_queues,
        ] {
            let mut p = Parser::leaf(1024);
            assert!(
                matches!(
                    parse_all(&mut p, bad.as_bytes()),
                    Err(ParseError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        let mut p = Parser::leaf(10);
        assert_eq!(
            parse_all(&mut p, b"LMSG a | q 11\r\n"),
            Err(ParseError::PayloadTooLarge { size: 11, max: 10 })
        );
    }

    #[test]
    fn hpub_is_refused_unless_headers_are_allowed() {
        let mut p = Parser::new(1024);
        p.allow_headers(false);
        assert_eq!(
            parse_all(&mut p, b"PUB a 0\r\n\r\nHPUB a 12 14\r\n"),
            Err(ParseError::HeadersNotSupported)
        );
        assert_eq!(ParseError::HeadersNotSupported.wire(), b"");
        let mut p = Parser::new(1024);
        p.allow_headers(false);
        p.allow_headers(true);
        assert_eq!(
            parse_all(&mut p, b"HPUB a 0 0\r\n\r\n").map(|ops| ops.len()),
            Ok(1)
        );
    }

    #[test]
    fn payload_must_end_with_crlf() {
        let mut p = Parser::new(1024);
        assert_eq!(
            parse_all(&mut p, b"PUB foo 2\r\nabcd\r\n"),
            Err(ParseError::UnknownOp)
        );
    }

    #[test]
    fn payload_in_one_read_is_not_copied() {
        let mut p = Parser::new(1024);
        let wire = Bytes::from_static(b"PUB foo 3\r\nabc\r\n");
        p.push(wire.clone());
        let Some(Op::Pub { data, .. }) = p.next().unwrap() else {
            panic!()
        };
        assert_eq!(data.as_ptr(), wire[11..].as_ptr());
    }

    #[test]
    fn split_payload_is_collected_once_and_idle_holds_nothing() {
        let mut p = Parser::new(1 << 20);
        p.push(b("PUB foo 100000\r\n"));
        assert_eq!(p.next(), Ok(None));
        let body = vec![b'x'; 100_000];
        for piece in body.chunks(1000) {
            p.push(Bytes::copy_from_slice(piece));
            assert_eq!(p.next(), Ok(None));
        }
        p.push(b("\r\nPING\r\n"));
        let Some(Op::Pub { data, .. }) = p.next().unwrap() else {
            panic!()
        };
        assert_eq!(data.len(), 100_002);
        assert_eq!(p.next(), Ok(Some(Op::Ping)));
        assert_eq!(p.next(), Ok(None));
        assert_eq!(p.buffered(), 0);
        assert_eq!(p.buf.capacity(), 0);
    }
}
