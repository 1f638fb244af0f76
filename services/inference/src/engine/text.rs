//! Turning sampled tokens into text a client can be sent: whole UTF-8 characters only, and
//! never the beginning of a stop string that may still complete.

/// Accumulates token bytes and releases text that is safe to send.
#[derive(Debug, Default)]
pub struct TextStream {
    /// Bytes of a UTF-8 character split across tokens.
    partial: Vec<u8>,
    /// Decoded text held back because it may be the start of a stop string.
    held: String,
    stops: Vec<String>,
}

/// What one token contributed.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text to send now (possibly empty).
    Text(String),
    /// A stop string completed: send this text (what preceded the stop) and finish.
    Stopped(String),
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> TextStream {
        TextStream {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..TextStream::default()
        }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Piece {
        self.partial.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(s) => s.len(),
            // An invalid sequence that is not merely incomplete is replaced, not held forever.
            Err(e) if e.error_len().is_some() => {
                let text = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                return self.release(text);
            }
            Err(e) => e.valid_up_to(),
        };
        let text = String::from_utf8(self.partial.drain(..valid).collect())
            .expect("checked to be valid UTF-8");
        self.release(text)
    }

    /// Everything still held, at the end of generation.
    pub fn finish(&mut self) -> String {
        let mut rest = std::mem::take(&mut self.held);
        rest.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.partial)));
        rest
    }

    fn release(&mut self, text: String) -> Piece {
        self.held.push_str(&text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let before = self.held[..at].to_string();
            self.held.clear();
            return Piece::Stopped(before);
        }
        let keep = self.longest_stop_prefix_suffix();
        let send = self.held.len() - keep;
        let out = self.held[..send].to_string();
        self.held.drain(..send);
        Piece::Text(out)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for (len, _) in stop.char_indices().skip(1) {
                if len > best && self.held.ends_with(&stop[..len]) {
                    best = len;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_characters_split_across_tokens() {
        let mut t = TextStream::new(vec![]);
        let snowman = "☃".as_bytes();
        assert_eq!(t.push(&snowman[..1]), Piece::Text(String::new()));
        assert_eq!(t.push(&snowman[1..]), Piece::Text("☃".into()));
    }

    #[test]
    fn holds_a_possible_stop_then_releases_it() {
        let mut t = TextStream::new(vec!["END".into()]);
        assert_eq!(t.push(b"abc E"), Piece::Text("abc ".into()));
        assert_eq!(t.push(b"N"), Piece::Text(String::new()));
        assert_eq!(t.push(b"d"), Piece::Text("ENd".into()));
    }

    #[test]
    fn stops_at_the_earliest_stop_string() {
        let mut t = TextStream::new(vec!["\n\n".into(), "x".into()]);
        assert_eq!(t.push(b"one"), Piece::Text("one".into()));
        assert_eq!(t.push(b" two\n\nthree x"), Piece::Stopped(" two".into()));
    }

    #[test]
    fn invalid_bytes_are_replaced_not_held() {
        let mut t = TextStream::new(vec![]);
        assert_eq!(t.push(&[0xff, b'a']), Piece::Text("\u{fffd}a".into()));
    }

    #[test]
    fn finish_returns_what_was_held() {
        let mut t = TextStream::new(vec!["STOP".into()]);
        assert_eq!(t.push(b"ST"), Piece::Text(String::new()));
        assert_eq!(t.finish(), "ST");
    }
}
