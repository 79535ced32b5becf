//! `cargo run --example peer -- [--listen] ADDR MODE [--send SIZE] [--linger0]`
//!
//! A scriptable TCP peer process, written with blocking std sockets (no heartloop), that the
//! tests and the experiments spawn and kill by pid. It prints one line per step on stdout:
//! `READY <local addr>` once connected (or accepted, with `--listen`, after
//! `LISTENING <addr>`), then what the mode reports.
//!
//! Modes:
//! * `idle`      read and discard until EOF (prints `EOF`), reset (`RESET`) or error (`ERROR <e>`); never sends.
//! * `noread`    never read; sleep until killed (its receive buffer fills up).
//! * `exit`      close cleanly and exit 0 at once.
//! * `abort`     close with `SO_LINGER` 0 (a reset) and exit.
//! * `halfclose` shut down the writing side, then read until EOF: prints `GOT <bytes>`.
//! * `echo`      echo everything until EOF.
//! * `sink`      read until EOF, checking the pattern byte i = i % 251: prints
//!   `SINK <bytes> OK` or `SINK <bytes> BAD <offset>`, and `PROGRESS <bytes>` every MiB;
//!   a read error (a reset) ends it too, after an `ERROR <error>` line.
//! * `source`    write the pattern (i % 251) forever, as fast as the peer takes it.
//! * `stdio`     a stand-in for `nc`: copy stdin to the connection (and shut down the
//!   writing side at its end) and the connection to stdout, until the peer closes.
//!
//! `--send SIZE` first writes SIZE bytes of the pattern (`65536`, `64k`, `1MiB`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

#[path = "common/opts.rs"]
mod opts;

const HELP: &str = "\
peer: a scriptable blocking TCP peer (std sockets, no heartloop) that tests spawn and kill

usage: peer [--listen] ADDR MODE [--send SIZE] [--linger0]

modes:
  idle        read and discard until EOF, reset or error; never send
  noread      never read; sleep until killed
  exit        close cleanly and exit
  abort       close with SO_LINGER 0 (a reset) and exit
  halfclose   shut down the writing side, then read until EOF
  echo        echo everything until EOF
  sink        read until EOF, checking the pattern byte i = i % 251
  source      write the pattern forever
  stdio       copy stdin to the connection and the connection to stdout (like nc)

options:
  --listen        accept one connection on ADDR instead of connecting to it
  --send SIZE     first write SIZE bytes of the pattern (e.g. 65536 or 64k)
  --linger0       set SO_LINGER 0, so that closing resets the connection
  -h, --help      print this help

One line per step on stdout: READY <local addr> once connected (after LISTENING <addr>
with --listen), then what the mode reports.
";

/// `[--listen] ADDR MODE [--send SIZE] [--linger0]`.
struct Opts {
    listen: bool,
    linger0: bool,
    send: usize,
    addr: SocketAddr,
    mode: Mode,
}

/// What the peer does once connected (see the module docs).
#[derive(Clone, Copy)]
enum Mode {
    Idle,
    NoRead,
    Exit,
    Abort,
    HalfClose,
    Echo,
    Sink,
    Source,
    Stdio,
}

impl Mode {
    const ALL: [(&str, Mode); 9] = [
        ("idle", Mode::Idle),
        ("noread", Mode::NoRead),
        ("exit", Mode::Exit),
        ("abort", Mode::Abort),
        ("halfclose", Mode::HalfClose),
        ("echo", Mode::Echo),
        ("sink", Mode::Sink),
        ("source", Mode::Source),
        ("stdio", Mode::Stdio),
    ];

    fn parse(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .iter()
            .find(|(name, _)| *name == s)
            .map(|&(_, m)| m)
            .ok_or_else(|| {
                let names: Vec<&str> = Mode::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown mode '{s}' ({})", names.join(", "))
            })
    }
}

fn parse_args() -> Result<Opts, lexopt::Error> {
    use lexopt::prelude::*;
    let (mut listen, mut linger0, mut send) = (false, false, 0);
    let mut positional = Vec::new();
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("listen") => listen = true,
            Long("linger0") => linger0 = true,
            Long("send") => send = p.value()?.parse_with(opts::parse_size_usize)?,
            Short('h') | Long("help") => opts::exit_help(HELP),
            Value(v) if positional.len() < 2 => positional.push(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    let [addr, mode] = <[String; 2]>::try_from(positional)
        .map_err(|_| "needs ADDR and MODE, e.g. `peer 127.0.0.1:7000 stdio`")?;
    let addr = addr.parse().map_err(|e| format!("ADDR '{addr}': {e}"))?;
    let mode = Mode::parse(&mode)?;
    Ok(Opts {
        listen,
        linger0,
        send,
        addr,
        mode,
    })
}

fn main() {
    let Opts {
        listen,
        linger0,
        send,
        addr,
        mode,
    } = parse_args().unwrap_or_else(|e| opts::exit_usage("peer", e));

    let mut s = if listen {
        let l = TcpListener::bind(addr).expect("bind");
        say(&format!("LISTENING {}", l.local_addr().unwrap()));
        l.accept().expect("accept").0
    } else {
        TcpStream::connect(addr).expect("connect")
    };
    let _ = s.set_nodelay(true);
    if linger0 {
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
    }
    say(&format!("READY {}", s.local_addr().unwrap()));
    if send > 0 {
        let mut pat = Pattern(0);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = send;
        while left > 0 {
            let n = left.min(buf.len());
            pat.fill(&mut buf[..n]);
            s.write_all(&buf[..n]).expect("send");
            left -= n;
        }
        say(&format!("SENT {send}"));
    }
    let mut buf = vec![0u8; 64 * 1024];
    match mode {
        Mode::Idle => loop {
            match s.read(&mut buf) {
                Ok(0) => break say("EOF"),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break say("RESET"),
                Err(e) => break say(&format!("ERROR {e}")),
            }
        },
        Mode::NoRead => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Mode::Exit => drop(s),
        Mode::Abort => {
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .expect("linger");
            drop(s);
        }
        Mode::HalfClose => {
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            say("HALFCLOSED");
            let mut got = 0;
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got += n;
            }
            say(&format!("GOT {got}"));
        }
        Mode::Echo => loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        },
        Mode::Sink => {
            let mut total = 0usize;
            let mut bad = None;
            let mut next_report = 1 << 20;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Err(e) => break say(&format!("ERROR {e}")),
                    Ok(n) => {
                        for (i, b) in buf[..n].iter().enumerate() {
                            if bad.is_none() && *b != ((total + i) % 251) as u8 {
                                bad = Some(total + i);
                            }
                        }
                        total += n;
                        if total >= next_report {
                            say(&format!("PROGRESS {total}"));
                            next_report += 1 << 20;
                        }
                    }
                }
            }
            match bad {
                None => say(&format!("SINK {total} OK")),
                Some(at) => say(&format!("SINK {total} BAD {at}")),
            }
        }
        Mode::Source => {
            let mut pat = Pattern(send);
            loop {
                pat.fill(&mut buf);
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        }
        Mode::Stdio => {
            let mut to_peer = s.try_clone().expect("clone the socket");
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_peer);
                let _ = to_peer.shutdown(std::net::Shutdown::Write);
            });
            let mut out = std::io::stdout().lock();
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        }
    }
}

/// The byte stream i % 251 (a prime, so chunk boundaries never line up with it).
struct Pattern(usize);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            *b = (self.0 % 251) as u8;
            self.0 += 1;
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
