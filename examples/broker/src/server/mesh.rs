//! The other reactors of the process, as neighbours (see the module docs of `server.rs`).
//!
//! Every reactor has an inbox (a `heartloop::channel`, bounded, woken once per burst);
//! what one reactor has for another during a turn (interest changes, messages, barriers)
//! is collected in order and sent at the end of the turn as one [`Batch`]: one lock and at
//! most one wakeup per peer per turn, however many messages. A message is sent to a peer
//! once, whatever the number of its subscribers there, its payload a `Bytes` shared with
//! this reactor's own subscribers (no copy per subscriber, nor per peer). Each channel is
//! FIFO, so messages from one publisher on one subject arrive in order.
//!
//! A peer whose inbox is full (its thread is not keeping up) does not stall this one:
//! the batch stays here and is offered again after [`RETRY`], later ones joining it in
//! order. Payload bytes on their way to a peer (waiting here, or sent and not yet
//! processed there: a gauge shared by the two) are bounded by [`MIN_BACKLOG`] or
//! `max_pending` (the limit of one slow client), whichever is larger: beyond it further
//! messages for that peer are dropped and counted (a
//! warning is logged at 1, 2, 4, 8... drops), as nats-server drops what it cannot deliver
//! to a slow consumer; interest changes and barriers are never dropped (their number is
//! bounded by the subscriptions), so the subject space stays exact. A peer's inbox is
//! thus bounded in batches (`INBOX_CAPACITY`) and in payload bytes.
//!
//! Fan-in flow control works across reactors as it does on one (see `Server::hold_back`):
//! a message from a peer carries its publisher (client key and connection); when its
//! delivery finds a subscriber over half its `max_pending`, this reactor stops taking
//! mail at that message (what follows waits, in order, in its inbox and work list) and
//! asks the publisher's reactor to pause reading that publisher; once the subscriber
//! drains below half, or `STALL_MAX` after it went over, the rest is processed and the
//! publisher released. The stall stops this reactor's mail from every peer for that
//! while (at most a second per episode), not its clients' own traffic.
//!
//! Barriers make a client's PONG mean what it means on one reactor: after `SUB` (or
//! `UNSUB`) and `PING`, the `PONG` comes once every peer reactor has processed the
//! interest change, so a publisher on another reactor that starts after the `PONG` reaches
//! the new subscription. A barrier follows the interest changes in each peer's FIFO
//! inbox, and the peer answers it at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use heartloop::{ConnId, Receiver, Sender, TrySendError};

use super::{Interest, Server, Source};

/// Batches an inbox holds before senders must wait (a batch is one turn of a peer).
pub const INBOX_CAPACITY: usize = 4096;

/// How soon a batch refused by a full inbox is offered again.
pub const RETRY: Duration = Duration::from_millis(1);

/// The least bound on payload bytes on their way to one peer. Above `max_pending`: a
/// peer that stalls its mail for a subscriber over half its `max_pending` (see above)
/// lets what its publishers sent before the hold reached them pile up meanwhile.
pub const MIN_BACKLOG: usize = 64 << 20;

/// Batches taken from the inbox per turn (more announce themselves again).
const DRAIN_MAX: usize = 256;

/// What one reactor sends another in one turn, in order.
#[derive(Debug)]
pub struct Batch {
    from: usize,
    mails: Vec<Mail>,
    /// Payload bytes of its messages, taken off `gauge` once processed.
    bytes: usize,
    gauge: Arc<AtomicUsize>,
}

#[derive(Debug)]
enum Mail {
    /// The sender's side now has `weight` subscriptions on this subject and queue group
    /// (0: none).
    Interest {
        key: Interest,
        weight: u32,
    },
    /// A message for the receiver's subscribers (`queues`: the groups it was picked for).
    Msg {
        subject: Bytes,
        reply: Option<Bytes>,
        header_len: Option<usize>,
        data: Bytes,
        queues: Vec<Bytes>,
        /// The publisher on the sender's side (client key, connection), if a client.
        origin: Option<(usize, ConnId)>,
    },
    /// Pause reading this publisher (key, connection) of the receiver's: a subscriber
    /// it feeds on the sender's side is over half its `max_pending`.
    Hold {
        key: usize,
        conn: ConnId,
    },
    /// The `Hold` is over.
    Release {
        key: usize,
        conn: ConnId,
    },
    /// Answer with `BarrierAck` once what came before is processed.
    Barrier {
        id: u64,
    },
    BarrierAck {
        id: u64,
    },
}

#[derive(Debug)]
struct Peer {
    tx: Sender<Batch>,
    /// Waiting to be sent, in order.
    out: Vec<Mail>,
    /// Payload bytes of the messages in `out`.
    bytes: usize,
    /// Payload bytes sent to it and not yet processed there.
    in_flight: Arc<AtomicUsize>,
    /// Messages dropped since the start (see the module docs).
    dropped: u64,
}

/// This reactor's side of the mesh.
#[derive(Debug)]
pub struct Mesh {
    index: usize,
    inbox: Receiver<Batch>,
    /// `peers[i]`: reactor `i`; `None` for this one.
    peers: Vec<Option<Peer>>,
    /// Most bytes of messages waiting for one peer.
    max_backlog: usize,
    /// A batch was refused at the last flush.
    backlog: bool,
    /// Barrier id -> (client key, its conn, acknowledgements still to come).
    barriers: HashMap<u64, (usize, ConnId, usize)>,
    next_barrier: u64,
    drained: Vec<Batch>,
    /// Mail taken from the inbox and not yet processed, in order: (sender, mails, and
    /// the batch's bytes and gauge).
    work: VecDeque<(usize, std::vec::IntoIter<Mail>, usize, Arc<AtomicUsize>)>,
    /// Mail processing stopped for this subscriber (key, connection) over half its
    /// `max_pending`, and the publisher held for it (peer, key, connection).
    stall: Option<(Held, Option<Remote>)>,
}

/// A client (key, connection).
type Held = (usize, ConnId);

/// A client of a peer reactor (peer, key, connection).
type Remote = (usize, usize, ConnId);

/// A message for a peer (see [`Mesh::msg`]).
pub struct Msg<'a> {
    pub subject: &'a [u8],
    pub reply: Option<&'a [u8]>,
    pub header_len: Option<usize>,
    pub data: &'a Bytes,
    pub origin: Option<(usize, ConnId)>,
}

impl Mesh {
    pub fn new(
        index: usize,
        inbox: Receiver<Batch>,
        peers: Vec<Sender<Batch>>,
        max_backlog: usize,
    ) -> Mesh {
        let peers = peers
            .into_iter()
            .enumerate()
            .map(|(i, tx)| {
                (i != index).then(|| Peer {
                    tx,
                    out: Vec::new(),
                    bytes: 0,
                    in_flight: Arc::new(AtomicUsize::new(0)),
                    dropped: 0,
                })
            })
            .collect();
        Mesh {
            index,
            inbox,
            peers,
            max_backlog: max_backlog.max(MIN_BACKLOG),
            backlog: false,
            barriers: HashMap::new(),
            next_barrier: 0,
            drained: Vec::new(),
            work: VecDeque::new(),
            stall: None,
        }
    }

    /// Whether a batch waits for a peer whose inbox was full.
    pub fn backlogged(&self) -> bool {
        self.backlog
    }

    /// Whether mail processing waits for a subscriber to drain.
    pub fn stalled(&self) -> bool {
        self.stall.is_some()
    }

    fn push(&mut self, to: usize, mail: Mail) {
        if let Some(Some(p)) = self.peers.get_mut(to) {
            p.out.push(mail);
        }
    }

    fn others(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.peers.iter_mut().flatten()
    }

    /// Tell every peer this side's weight on `key`.
    pub fn announce(&mut self, key: &Interest, weight: u32) {
        for p in self.others() {
            p.out.push(Mail::Interest {
                key: key.clone(),
                weight,
            });
        }
    }

    /// Send a message to peer `to`, for its plain interest and the `queues` it was
    /// picked for.
    pub fn msg(&mut self, to: usize, m: Msg<'_>, queues: Vec<Bytes>) {
        let max = self.max_backlog;
        let Some(Some(p)) = self.peers.get_mut(to) else {
            return;
        };
        if p.bytes + p.in_flight.load(Ordering::Relaxed) > max {
            p.dropped += 1;
            if p.dropped.is_power_of_two() {
                log::warn!(
                    "reactor {to} is not keeping up: over {max} bytes of messages wait for \
                     it; {} dropped so far",
                    p.dropped
                );
            }
            return;
        }
        p.bytes += m.data.len();
        p.out.push(Mail::Msg {
            subject: Bytes::copy_from_slice(m.subject),
            reply: m.reply.map(Bytes::copy_from_slice),
            header_len: m.header_len,
            data: m.data.clone(),
            queues,
            origin: m.origin,
        });
    }

    /// Send a barrier for client `key`'s PING to every peer.
    pub fn barrier(&mut self, key: usize, conn: ConnId) {
        let id = self.next_barrier;
        self.next_barrier += 1;
        let n = self.peers.len() - 1;
        self.barriers.insert(id, (key, conn, n));
        for p in self.others() {
            p.out.push(Mail::Barrier { id });
        }
    }

    /// Offer every peer what waits for it (at the end of a turn).
    pub fn flush(&mut self) {
        let from = self.index;
        let mut backlog = false;
        for p in self.peers.iter_mut().flatten() {
            if p.out.is_empty() {
                continue;
            }
            let batch = Batch {
                from,
                mails: std::mem::take(&mut p.out),
                bytes: p.bytes,
                gauge: Arc::clone(&p.in_flight),
            };
            p.in_flight.fetch_add(p.bytes, Ordering::Relaxed);
            match p.tx.try_send(batch) {
                Ok(()) => p.bytes = 0,
                Err(TrySendError::Closed(_)) => p.bytes = 0, // the process is ending
                Err(e) => {
                    p.in_flight.fetch_sub(p.bytes, Ordering::Relaxed);
                    p.out = e.into_inner().mails;
                    backlog = true;
                }
            }
        }
        self.backlog = backlog;
    }
}

impl Server {
    /// `Event::Mail` for the mesh: process what the peers sent (unless stalled).
    pub(super) fn mesh_mail(&mut self) {
        if self.mesh.stall.is_some() {
            // The inbox stays announced; `mesh_resume` comes back to it.
            return;
        }
        // Only once what was taken is done: what waits stays in the inbox, whose bound
        // then pushes back on the peers (see `INBOX_CAPACITY`).
        if self.mesh.work.is_empty() {
            let mut batches = std::mem::take(&mut self.mesh.drained);
            self.mesh.inbox.drain(&mut batches, DRAIN_MAX);
            for b in batches.drain(..) {
                let work = (b.from, b.mails.into_iter(), b.bytes, b.gauge);
                self.mesh.work.push_back(work);
            }
            self.mesh.drained = batches;
        }
        while let Some((from, mails, _, _)) = self.mesh.work.front_mut() {
            let from = *from;
            let Some(mail) = mails.next() else {
                if let Some((_, _, bytes, gauge)) = self.mesh.work.pop_front() {
                    gauge.fetch_sub(bytes, Ordering::Relaxed);
                }
                continue;
            };
            self.mail(from, mail);
            if self.mesh.stall.is_some() {
                return;
            }
            if self.turn_spent() {
                // The rest waits in `work`, in order, for the next turn (`run` comes back
                // to it while it is not empty): the peers' messages take a turn's budget
                // like any client's.
                return;
            }
        }
    }

    /// Whether mail waits to be processed, taken from the inbox or not (and the mesh is not
    /// stalled). The inbox does not announce itself again while its last drain is being
    /// worked through, so the loop comes back to it.
    pub(super) fn mesh_pending(&self) -> bool {
        self.mesh.stall.is_none() && (!self.mesh.work.is_empty() || !self.mesh.inbox.is_empty())
    }

    /// A stalled mesh goes on once its subscriber drained below half its `max_pending`,
    /// went away, or has held it for `STALL_MAX` (see `hold_back`).
    pub(super) fn mesh_resume(&mut self) {
        let Some(((s, sconn), origin)) = self.mesh.stall else {
            return;
        };
        if self
            .client(s, sconn)
            .is_some_and(|c| !c.closing && c.gone.is_none())
            && self.hold_back(s)
        {
            return;
        }
        self.mesh.stall = None;
        if let Some((peer, key, conn)) = origin {
            self.mesh.push(peer, Mail::Release { key, conn });
        }
        self.mesh_mail();
    }

    fn mail(&mut self, from: usize, mail: Mail) {
        match mail {
            Mail::Interest { key, weight } => self.nbr_interest(from, key, weight),
            Mail::Msg {
                subject,
                reply,
                header_len,
                data,
                queues,
                origin,
            } => {
                self.remote_origin = origin.is_some();
                self.publish(
                    Source::Nbr(from),
                    &subject,
                    reply.as_deref(),
                    header_len,
                    data,
                    &queues,
                );
                self.remote_origin = false;
                if let Some(sub) = self.hold.take() {
                    let held = origin.map(|(key, conn)| (from, key, conn));
                    if let Some((peer, key, conn)) = held {
                        self.mesh.push(peer, Mail::Hold { key, conn });
                    }
                    self.mesh.stall = Some((sub, held));
                }
            }
            Mail::Hold { key, conn } => {
                if let Some(c) = self.clients.get_mut(key).filter(|c| c.conn == conn) {
                    c.remote_holds += 1;
                    if c.remote_holds == 1 {
                        let _ = self.reactor.pause_reading(conn);
                    }
                }
            }
            Mail::Release { key, conn } => {
                if let Some(c) = self.clients.get_mut(key).filter(|c| c.conn == conn) {
                    c.remote_holds = c.remote_holds.saturating_sub(1);
                    if c.remote_holds == 0 && c.held_by.is_none() && !c.yielded && !c.closing {
                        if c.eof {
                            self.close(key);
                        } else {
                            let _ = self.reactor.resume_reading(conn);
                        }
                    }
                }
            }
            Mail::Barrier { id } => self.mesh.push(from, Mail::BarrierAck { id }),
            Mail::BarrierAck { id } => {
                if let Some(b) = self.mesh.barriers.get_mut(&id) {
                    b.2 -= 1;
                    if b.2 == 0 {
                        let (key, conn, _) = *b;
                        self.mesh.barriers.remove(&id);
                        self.barrier_done(key, conn);
                    }
                }
            }
        }
    }
}
