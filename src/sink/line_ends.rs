//! Line ends on the way into local files: mail travels with CRLF, a Maildir
//! and an MDA's input want LF. One converter for every sink that needs it.

/// Turns CRLF into LF, keeping a lone CR; the state carries a CR that ends
/// a chunk over to the next.
#[derive(Debug, Default)]
pub(crate) struct ToLf {
    pending_cr: bool,
}

impl ToLf {
    pub(crate) fn convert(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        if self.pending_cr {
            self.pending_cr = false;
            if rest.first() != Some(&b'\n') {
                out.push(b'\r');
            }
        }
        while let Some(cr) = memchr::memchr(b'\r', rest) {
            out.extend_from_slice(&rest[..cr]);
            match rest.get(cr + 1) {
                Some(b'\n') => {}
                Some(_) => out.push(b'\r'),
                None => self.pending_cr = true,
            }
            rest = &rest[cr + 1..];
        }
        out.extend_from_slice(rest);
    }

    pub(crate) fn end(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_becomes_lf_across_chunks() {
        let mut lf = ToLf::default();
        let mut out = Vec::new();
        for chunk in [&b"a\r\nb\r"[..], b"\nc\rd\r", b"", b"x\r"] {
            lf.convert(chunk, &mut out);
        }
        lf.end(&mut out);
        assert_eq!(out, b"a\nb\nc\rd\rx\r");
    }
}
