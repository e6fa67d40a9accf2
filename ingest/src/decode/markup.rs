//! A streaming tokenizer for the markup bank files are written in: XML
//! (CAMT.053, OFX 2.x) and OFX 1.x's SGML, whose leaf elements have no end
//! tags. It hands out start tags, end tags and text one at a time, with
//! namespace prefixes dropped and the five XML entities and character
//! references decoded; comments, processing instructions and declarations
//! are skipped. No token is held past `max_token` bytes: a longer one is read
//! through and reported as [`Token::TooLarge`], so a hostile file cannot make
//! it buffer more than one record's worth.

use std::io::BufRead;

/// One piece of markup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// `<name a="v">`, or `<name/>` when `empty`.
    Start {
        name: String,
        attrs: Vec<(String, String)>,
        empty: bool,
    },
    /// `</name>`.
    End { name: String },
    /// Character data between tags, entities decoded, not trimmed; never
    /// only whitespace.
    Text(String),
    /// A tag or text longer than the limit; it was skipped.
    TooLarge,
    /// Text that is not in the declared encoding (UTF-8 unless
    /// [`Markup::windows_1252`] was called).
    BadText,
}

/// The tokenizer over a body.
pub struct Markup<R> {
    reader: R,
    max_token: usize,
    windows_1252: bool,
    consumed: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> Markup<R> {
    pub fn new(reader: R, max_token: usize) -> Self {
        Self {
            reader,
            max_token,
            windows_1252: false,
            consumed: 0,
            buf: Vec::new(),
        }
    }

    /// Reads text as Windows-1252 from now on (OFX 1.x's `CHARSET:1252`,
    /// of which ISO-8859-1 is a subset for every printable character).
    pub fn windows_1252(&mut self) {
        self.windows_1252 = true;
    }

    /// Bytes read so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The next token, `None` at the end of the body, or an error when the
    /// markup is broken (a tag never closed) or reading failed.
    pub fn next(&mut self) -> Result<Option<Token>, String> {
        loop {
            let Some(first) = self.peek()? else {
                return Ok(None);
            };
            if first != b'<' {
                let too_large = self.take_until(b"<", false)?;
                if too_large {
                    return Ok(Some(Token::TooLarge));
                }
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(match self.text() {
                    Some(text) => Token::Text(decode_entities(&text)),
                    None => Token::BadText,
                }));
            }
            self.bump();
            match self.peek()? {
                Some(b'?') => {
                    self.skip_until(b"?>")?;
                    continue;
                }
                Some(b'!') => {
                    self.bump();
                    match self.peek()? {
                        Some(b'-') => {
                            self.expect(b"--")?;
                            self.skip_until(b"-->")?;
                            continue;
                        }
                        Some(b'[') => {
                            self.expect(b"[CDATA[")?;
                            let too_large = self.take_until(b"]]>", true)?;
                            if too_large {
                                return Ok(Some(Token::TooLarge));
                            }
                            return Ok(Some(match self.text() {
                                Some(text) => Token::Text(text),
                                None => Token::BadText,
                            }));
                        }
                        _ => {
                            self.skip_until(b">")?;
                            continue;
                        }
                    }
                }
                _ => {}
            }
            let too_large = self.take_tag()?;
            if too_large {
                return Ok(Some(Token::TooLarge));
            }
            let Some(tag) = self.text() else {
                return Ok(Some(Token::BadText));
            };
            return parse_tag(&tag).map(Some);
        }
    }

    fn peek(&mut self) -> Result<Option<u8>, String> {
        let buf = self.reader.fill_buf().map_err(|e| e.to_string())?;
        Ok(buf.first().copied())
    }

    fn bump(&mut self) {
        self.reader.consume(1);
        self.consumed += 1;
    }

    /// Consumes `expected`, byte by byte (it may straddle two reads).
    fn expect(&mut self, expected: &[u8]) -> Result<(), String> {
        for want in expected {
            if self.peek()? != Some(*want) {
                return Err(format!(
                    "expected `{}` after `<!`",
                    String::from_utf8_lossy(expected)
                ));
            }
            self.bump();
        }
        Ok(())
    }

    /// Reads into `buf` up to `end`: up to (not including) a one-byte `end`
    /// that stays unread when `!consume_end`, or through a marker that is
    /// consumed and dropped when `consume_end`. Returns whether the piece
    /// was over the limit; then `buf` holds nothing useful, and no more than
    /// the marker's length was ever held.
    fn take_until(&mut self, end: &[u8], consume_end: bool) -> Result<bool, String> {
        self.buf.clear();
        let mut too_large = false;
        let last = end[end.len() - 1];
        let allowance = if consume_end { end.len() } else { 0 };
        loop {
            let buf = self.reader.fill_buf().map_err(|e| e.to_string())?;
            if buf.is_empty() {
                if consume_end {
                    return Err(format!(
                        "the body ended inside a section that `{}` would close",
                        String::from_utf8_lossy(end)
                    ));
                }
                return Ok(too_large);
            }
            let found = memchr(last, buf);
            let take = match found {
                Some(i) if consume_end => i + 1,
                Some(i) => i,
                None => buf.len(),
            };
            let piece = &buf[..take];
            if !too_large && self.buf.len() + piece.len() <= self.max_token + allowance {
                self.buf.extend_from_slice(piece);
            } else {
                too_large = true;
                // Only a tail long enough to hold the marker is kept.
                self.buf
                    .extend_from_slice(&piece[piece.len().saturating_sub(end.len())..]);
                let excess = self.buf.len().saturating_sub(end.len());
                self.buf.drain(..excess);
            }
            self.reader.consume(take);
            self.consumed += take as u64;
            if found.is_none() {
                continue;
            }
            if !consume_end {
                return Ok(too_large);
            }
            if self.buf.ends_with(end) {
                self.buf.truncate(self.buf.len() - end.len());
                return Ok(too_large);
            }
        }
    }

    fn skip_until(&mut self, end: &[u8]) -> Result<(), String> {
        let max = self.max_token;
        // Only the tail is kept, so a long comment costs nothing.
        self.max_token = 0;
        let r = self.take_until(end, true);
        self.max_token = max;
        r.map(|_| ())
    }

    /// Reads a tag's inside up to its `>`, where a `>` inside a quoted
    /// attribute value does not end it.
    fn take_tag(&mut self) -> Result<bool, String> {
        self.buf.clear();
        let mut too_large = false;
        let mut quote: Option<u8> = None;
        loop {
            let buf = self.reader.fill_buf().map_err(|e| e.to_string())?;
            if buf.is_empty() {
                return Err("the body ended inside a tag".into());
            }
            let mut end = None;
            for (i, b) in buf.iter().enumerate() {
                match (quote, *b) {
                    (None, b'"' | b'\'') => quote = Some(*b),
                    (Some(q), b) if b == q => quote = None,
                    (None, b'>') => {
                        end = Some(i);
                        break;
                    }
                    (None, b'<') => return Err("a `<` inside a tag".into()),
                    _ => {}
                }
            }
            let n = end.unwrap_or(buf.len());
            if !too_large && self.buf.len() + n <= self.max_token {
                self.buf.extend_from_slice(&buf[..n]);
            } else {
                too_large = true;
                self.buf.clear();
            }
            let used = n + usize::from(end.is_some());
            self.reader.consume(used);
            self.consumed += used as u64;
            if end.is_some() {
                return Ok(too_large);
            }
        }
    }

    /// `buf` as text in the body's encoding.
    fn text(&mut self) -> Option<String> {
        let bytes = std::mem::take(&mut self.buf);
        if self.windows_1252 {
            return Some(bytes.iter().map(|b| windows_1252(*b)).collect());
        }
        String::from_utf8(bytes).ok()
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|b| *b == needle)
}

/// The longest element name taken: real ones are short, and decoders keep
/// the names of the open elements.
const MAX_NAME: usize = 256;

/// A tag's inside (`name a="v"`, `/name`, `name/`) as a token.
fn parse_tag(tag: &str) -> Result<Token, String> {
    if let Some(rest) = tag.strip_prefix('/') {
        let name = local(rest.trim());
        if name.is_empty() || name.len() > MAX_NAME {
            return Err("an end tag without a name, or with one too long".into());
        }
        return Ok(Token::End { name });
    }
    let (inner, empty) = match tag.strip_suffix('/') {
        Some(inner) => (inner, true),
        None => (tag, false),
    };
    let inner = inner.trim_end();
    let name_end = inner
        .find(|c: char| c.is_ascii_whitespace())
        .unwrap_or(inner.len());
    let name = local(&inner[..name_end]);
    if name.len() > MAX_NAME {
        return Err(format!("an element name longer than {MAX_NAME} bytes"));
    }
    if name.is_empty() || !name.chars().all(name_char) {
        return Err(format!(
            "`<{}>` is not a tag",
            inner.chars().take(40).collect::<String>()
        ));
    }
    let mut attrs = Vec::new();
    let mut rest = inner[name_end..].trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("attribute without a value in `<{name}>`"))?;
        let key = local(rest[..eq].trim());
        let after = rest[eq + 1..].trim_start();
        let quote = after
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .ok_or_else(|| format!("unquoted attribute value in `<{name}>`"))?;
        let close = after[1..]
            .find(quote)
            .ok_or_else(|| format!("unclosed attribute value in `<{name}>`"))?;
        attrs.push((key, decode_entities(&after[1..1 + close])));
        rest = after[close + 2..].trim_start();
    }
    Ok(Token::Start { name, attrs, empty })
}

fn name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// A name without its namespace prefix.
fn local(name: &str) -> String {
    name.rsplit(':').next().unwrap_or(name).to_string()
}

/// Text with `&amp;`-style entities and `&#..;` references decoded. An
/// ampersand that starts none is kept as it is (OFX 1.x files write
/// `AT&T`).
pub fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        // Entities are short: look for the `;` among the next few bytes
        // only, so text of many bare `&` stays linear.
        let window = &rest.as_bytes()[..rest.len().min(12)];
        let decoded = window.iter().position(|b| *b == b';').and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let code = if let Some(hex) = entity
                        .strip_prefix("#x")
                        .or_else(|| entity.strip_prefix("#X"))
                    {
                        u32::from_str_radix(hex, 16).ok()
                    } else {
                        entity.strip_prefix('#').and_then(|d| d.parse().ok())
                    };
                    code.and_then(char::from_u32)
                }
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A Windows-1252 byte as a character.
fn windows_1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9f => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(body: &[u8], max: usize) -> Result<Vec<Token>, String> {
        let mut m = Markup::new(body, max);
        let mut out = Vec::new();
        while let Some(t) = m.next()? {
            out.push(t);
        }
        Ok(out)
    }

    fn start(name: &str) -> Token {
        Token::Start {
            name: name.into(),
            attrs: vec![],
            empty: false,
        }
    }

    #[test]
    fn xml_with_prefixes_attributes_entities_and_skipped_parts() {
        let body = br#"<?xml version="1.0"?><!-- a > comment --><!DOCTYPE x>
<ns:Doc xmlns:ns="urn:x"><Amt Ccy='EUR' x="a&gt;b">1.5</Amt><E/><T>A &amp; B &#233;&#x41;</T><![CDATA[<raw>]]></ns:Doc>"#;
        assert_eq!(
            tokens(body, 1024).unwrap(),
            vec![
                Token::Start {
                    name: "Doc".into(),
                    attrs: vec![("ns".into(), "urn:x".into())],
                    empty: false
                },
                Token::Start {
                    name: "Amt".into(),
                    attrs: vec![("Ccy".into(), "EUR".into()), ("x".into(), "a>b".into())],
                    empty: false
                },
                Token::Text("1.5".into()),
                Token::End { name: "Amt".into() },
                Token::Start {
                    name: "E".into(),
                    attrs: vec![],
                    empty: true
                },
                start("T"),
                Token::Text("A & B éA".into()),
                Token::End { name: "T".into() },
                Token::Text("<raw>".into()),
                Token::End { name: "Doc".into() },
            ]
        );
    }

    #[test]
    fn sgml_leaves_and_a_bare_ampersand() {
        let body = b"<STMTTRN><NAME>AT&T<TRNAMT>-1.00\r\n</STMTTRN>";
        assert_eq!(
            tokens(body, 1024).unwrap(),
            vec![
                start("STMTTRN"),
                start("NAME"),
                Token::Text("AT&T".into()),
                start("TRNAMT"),
                Token::Text("-1.00\r\n".into()),
                Token::End {
                    name: "STMTTRN".into()
                },
            ]
        );
    }

    #[test]
    fn long_tokens_are_skipped_and_reading_goes_on() {
        let long = "x".repeat(5000);
        let body = format!("<A>{long}</A><B c=\"{long}\"/><C>ok</C><!--{long}-->");
        let got = tokens(body.as_bytes(), 100).unwrap();
        assert_eq!(
            got,
            vec![
                start("A"),
                Token::TooLarge,
                Token::End { name: "A".into() },
                Token::TooLarge,
                start("C"),
                Token::Text("ok".into()),
                Token::End { name: "C".into() },
            ]
        );
    }

    #[test]
    fn broken_markup_is_an_error_and_bad_bytes_are_bad_text() {
        assert!(tokens(b"<A><B", 100).is_err());
        assert!(tokens(b"<A x=1>", 100).is_err());
        assert!(tokens(b"<!-- never closed", 100).is_err());
        assert_eq!(
            tokens(b"<A>\xff</A>", 100).unwrap()[1],
            Token::BadText,
            "invalid UTF-8"
        );
        let mut m = Markup::new(&b"<A>caf\xe9 \x80</A>"[..], 100);
        m.windows_1252();
        m.next().unwrap();
        assert_eq!(m.next().unwrap(), Some(Token::Text("café €".into())));
    }

    #[test]
    fn a_section_end_across_reads_is_found() {
        // A one-byte buffer puts every boundary between two reads.
        let body = b"<!-- x --><A><![CDATA[a]]b]]></A>";
        let reader = std::io::BufReader::with_capacity(1, &body[..]);
        let mut m = Markup::new(reader, 100);
        let mut got = Vec::new();
        while let Some(t) = m.next().unwrap() {
            got.push(t);
        }
        assert_eq!(
            got,
            vec![
                start("A"),
                Token::Text("a]]b".into()),
                Token::End { name: "A".into() }
            ]
        );
    }
}
