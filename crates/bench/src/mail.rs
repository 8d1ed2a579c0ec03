//! The messages the scenarios fetch, made by a deterministic PRNG.

use crate::MIB;

pub struct Message {
    pub id: String,
    pub data: Vec<u8>,
}

/// SplitMix64: small, fast, deterministic.
pub struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Log-uniform in [lo, hi).
    fn log_range(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.unit()).exp()
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len() as u64) as usize]
    }
}

pub const NAMES: &[&str] = &[
    "Alice Martin",
    "Bob Schmidt",
    "Chen Wei",
    "Dana Kowalski",
    "Emeka Obi",
    "Fatima Haddad",
    "Gustavo Lima",
    "Hana Sato",
    "Ivan Petrov",
    "Julia Rossi",
    "Kofi Mensah",
    "Laura Nilsson",
    "Mateo Garcia",
    "Nora Berg",
    "Omar Khalil",
];
pub const DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "example.net",
    "mail.example.de",
    "lists.example.io",
];
pub const SUBJECTS: &[&str] = &[
    "Re: meeting notes",
    "Quarterly figures",
    "Fwd: travel booking",
    "Build failed on main",
    "Invitation: design review",
    "Your order has shipped",
    "Re: Re: contract draft",
    "Weekly newsletter",
    "Photos",
    "Question about the API",
    "[list] Release 2.4 announcement",
    "Lunch?",
    "Password reset requested",
    "Re: bug in the parser",
    "Minutes of the board meeting",
];
pub const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "this", "are", "at", "from", "have", "or", "report", "meeting", "please",
    "attached", "review", "thanks", "tomorrow", "server", "release", "draft", "numbers",
    "schedule", "budget", "regards",
];
pub const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn headers(rng: &mut Rng, n: usize, boundary: Option<&str>) -> (String, String) {
    let from = rng.pick(NAMES);
    let from_addr = format!(
        "{}@{}",
        from.split(' ').next().unwrap().to_ascii_lowercase(),
        rng.pick(DOMAINS)
    );
    let id = format!("<bench.{n}.{:016x}@{}>", rng.next(), rng.pick(DOMAINS));
    let day = 1 + rng.below(28);
    let (h, m, s) = (rng.below(24), rng.below(60), rng.below(60));
    let ctype = match boundary {
        Some(b) => format!("multipart/mixed; boundary=\"{b}\""),
        None => "text/plain; charset=utf-8; format=flowed".to_string(),
    };
    let text = format!(
        "Return-Path: <{from_addr}>\n\
         Delivered-To: bench@example.com\n\
         Received: from mx{mx}.example.net (mx{mx}.example.net [192.0.2.{ip}])\n\
         \tby mail.example.com (Postfix) with ESMTPS id {qid:X}\n\
         \tfor <bench@example.com>; Mon, {day} Mar 2026 {h:02}:{m:02}:{s:02} +0000 (UTC)\n\
         From: {from} <{from_addr}>\n\
         To: Bench User <bench@example.com>\n\
         Subject: {subject}\n\
         Date: Mon, {day} Mar 2026 {h:02}:{m:02}:{s:02} +0000\n\
         Message-ID: {id}\n\
         MIME-Version: 1.0\n\
         Content-Type: {ctype}\n\
         X-Bench-Seq: {n}\n",
        mx = rng.below(9) + 1,
        ip = rng.below(250) + 1,
        qid = rng.next() & 0xFF_FFFF_FFFF,
        subject = rng.pick(SUBJECTS),
    );
    (id, text)
}

/// Plain text of about `len` bytes, wrapped at ~72 columns.
pub fn text_body(rng: &mut Rng, len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    let mut col = 0;
    while out.len() - start < len {
        let w = rng.pick(WORDS);
        if col + w.len() + 1 > 72 {
            out.push(b'\n');
            col = 0;
            // Now and then a blank line, and a line starting with a dot
            // (which POP3 has to dot-stuff).
            match rng.below(12) {
                0 => out.push(b'\n'),
                1 => {
                    out.extend_from_slice(b".");
                    col = 1;
                }
                _ => {}
            }
        } else if col > 0 {
            out.push(b' ');
            col += 1;
        }
        out.extend_from_slice(w.as_bytes());
        col += w.len();
    }
    out.push(b'\n');
}

/// Random base64 of about `len` bytes in 76-column lines.
pub fn base64_body(rng: &mut Rng, len: usize, out: &mut Vec<u8>) {
    out.reserve(len + len / 76 + 2);
    let mut remaining = len;
    while remaining > 0 {
        let line = remaining.min(76);
        let mut i = 0;
        while i < line {
            let mut r = rng.next();
            for _ in 0..10.min(line - i) {
                out.push(B64[(r & 63) as usize]);
                r >>= 6;
                i += 1;
            }
        }
        out.push(b'\n');
        remaining -= line;
    }
}

pub fn message(rng: &mut Rng, n: usize, size: usize) -> Message {
    let mut data = Vec::with_capacity(size + 4096);
    if size < 24 * 1024 {
        let (id, h) = headers(rng, n, None);
        data.extend_from_slice(h.as_bytes());
        data.push(b'\n');
        let body = size.saturating_sub(data.len()).max(64);
        text_body(rng, body, &mut data);
        return Message { id, data };
    }
    let boundary = format!("=_bench_{:012x}", rng.next() & 0xFFFF_FFFF_FFFF);
    let (id, h) = headers(rng, n, Some(&boundary));
    data.extend_from_slice(h.as_bytes());
    data.extend_from_slice(b"\nThis is a multi-part message in MIME format.\n\n");
    data.extend_from_slice(
        format!("--{boundary}\nContent-Type: text/plain; charset=utf-8\n\n").as_bytes(),
    );
    let text = 1000 + rng.below(3000) as usize;
    text_body(rng, text, &mut data);
    let ext = ["pdf", "jpg", "zip", "docx", "png"][rng.below(5) as usize];
    data.extend_from_slice(
        format!(
            "\n--{boundary}\nContent-Type: application/octet-stream; name=\"file{n}.{ext}\"\n\
             Content-Disposition: attachment; filename=\"file{n}.{ext}\"\n\
             Content-Transfer-Encoding: base64\n\n"
        )
        .as_bytes(),
    );
    let tail = format!("\n--{boundary}--\n");
    let b64 = size.saturating_sub(data.len() + tail.len()).max(76);
    // Lines are 77 bytes with their LF.
    base64_body(rng, b64 * 76 / 77, &mut data);
    data.extend_from_slice(tail.as_bytes());
    Message { id, data }
}

/// `n` messages totalling ~63 MiB × n/2000: 90 % of 2–20 KiB, 9.5 % of
/// 50–500 KiB, 0.5 % of 1–3 MiB, then scaled to hit the total.
pub fn mixed_messages(n: usize) -> Vec<Message> {
    let mut rng = Rng(0x6D61_696C_6665_7463); // "mailfetc"
    let kib = 1024.0;
    let mut sizes: Vec<f64> = (0..n)
        .map(|_| {
            let p = rng.unit();
            if p < 0.90 {
                rng.range(2.0 * kib, 20.0 * kib)
            } else if p < 0.995 {
                rng.log_range(50.0 * kib, 500.0 * kib)
            } else {
                rng.range(1024.0 * kib, 3072.0 * kib)
            }
        })
        .collect();
    let target = 63.0 * MIB * n as f64 / 2000.0;
    let sum: f64 = sizes.iter().sum();
    for s in &mut sizes {
        *s = (*s * target / sum).max(1024.0);
    }
    sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| message(&mut rng, i, s as usize))
        .collect()
}

pub fn big_message(size: usize) -> Message {
    let mut rng = Rng(0x6269_676D_6573_7367); // "bigmessg"
    message(&mut rng, 0, size)
}

/// `n` text messages of 2–4 KiB.
pub fn small_messages(n: usize) -> Vec<Message> {
    let mut rng = Rng(0x736D_616C_6C6D_7367); // "smallmsg"
    (0..n)
        .map(|i| {
            let size = rng.range(2048.0, 4096.0) as usize;
            message(&mut rng, i, size)
        })
        .collect()
}
