//! `cargo run --example peer -- [--listen] ADDR MODE [--send N] [--linger0]`
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
//!
//! `--send N` first writes N bytes of the pattern.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let listen = take_flag(&mut args, "--listen");
    let linger0 = take_flag(&mut args, "--linger0");
    let send: usize = take_opt(&mut args, "--send").map_or(0, |v| v.parse().expect("--send N"));
    if args.len() != 2 {
        eprintln!("usage: peer [--listen] ADDR MODE [--send N] [--linger0]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[0].parse().expect("ADDR");
    let mode = args[1].as_str();

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
        "idle" => loop {
            match s.read(&mut buf) {
                Ok(0) => break say("EOF"),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break say("RESET"),
                Err(e) => break say(&format!("ERROR {e}")),
            }
        },
        "noread" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        "exit" => drop(s),
        "abort" => {
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .expect("linger");
            drop(s);
        }
        "halfclose" => {
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
        "echo" => loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        },
        "sink" => {
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
        "source" => {
            let mut pat = Pattern(send);
            loop {
                pat.fill(&mut buf);
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
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

fn take_flag(args: &mut Vec<String>, name: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != name);
    args.len() != before
}

fn take_opt(args: &mut Vec<String>, name: &str) -> Option<String> {
    let i = args.iter().position(|a| a == name)?;
    args.remove(i);
    (i < args.len()).then(|| args.remove(i))
}
