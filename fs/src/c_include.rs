//! C and C++ headers name the headers they include. A compiler reads them one after
//! another as it meets each `#include`, each a round trip on a cold mount (gcc
//! compiling a hello world: `stdio.h`, then `features.h`, then the compiler's own
//! `stddef.h`, in turn). The predictor reads a header's `#include` lines when the
//! header is read, and fetches what they name from the usual include directories, so
//! the next ones are on their way while the compiler parses this one. Every
//! `#include` counts, whatever `#if` surrounds it: a few KB too many cost less than
//! a round trip.

/// Largest header looked through.
pub const MAX_HEADER: u64 = 512 << 10;
/// Most includes taken from one header.
const MAX_INCLUDES: usize = 64;
/// Longest include name taken.
const MAX_NAME: usize = 255;

/// What one `#include` line names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Include {
    /// `#include "name"`: looked for beside the including file first.
    Quoted(String),
    /// `#include <name>`: looked for in the include directories only.
    Angle(String),
}

impl Include {
    /// The name as written.
    pub fn name(&self) -> &str {
        match self {
            Include::Quoted(n) | Include::Angle(n) => n,
        }
    }
}

/// The `#include` and `#include_next` lines of `text` (a header's bytes, at most
/// [`MAX_HEADER`]), in order; empty for anything that is not text.
pub fn includes(text: &[u8]) -> Vec<Include> {
    if text.len() as u64 > MAX_HEADER || text.contains(&0) {
        return Vec::new();
    }
    let mut found = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        if found.len() == MAX_INCLUDES {
            break;
        }
        let Some(rest) = trim_start(line).strip_prefix(b"#") else {
            continue;
        };
        let rest = trim_start(rest);
        let Some(rest) = rest
            .strip_prefix(b"include_next")
            .or_else(|| rest.strip_prefix(b"include"))
        else {
            continue;
        };
        let rest = trim_start(rest);
        let (close, quoted) = match rest.first() {
            Some(b'<') => (b'>', false),
            Some(b'"') => (b'"', true),
            _ => continue,
        };
        let Some(end) = rest[1..].iter().position(|&b| b == close) else {
            continue;
        };
        let name = &rest[1..1 + end];
        let plain = |b: &u8| b.is_ascii_alphanumeric() || b"._+-/".contains(b);
        if name.is_empty() || name.len() > MAX_NAME || !name.iter().all(plain) || name[0] == b'/' {
            continue;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        found.push(if quoted {
            Include::Quoted(name)
        } else {
            Include::Angle(name)
        });
    }
    found
}

fn trim_start(s: &[u8]) -> &[u8] {
    let skip = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    &s[skip..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_lines_are_read_whatever_surrounds_them() {
        let header = b"/* stdio.h */\n#ifndef _STDIO_H\n#define _STDIO_H 1\n\
            #include <bits/libc-header-start.h>\n# include <stddef.h>\n\
            #if defined __USE_XOPEN2K8\n  #  include_next   <stdarg.h>\n#endif\n\
            #include \"local.h\"\n#include MACRO_NAME\n#define X \"#include <no.h>\"\n\
            #include <unterminated.h\n#include </abs.h>\n#include <a b.h>\n#pragma once\n";
        assert_eq!(
            includes(header),
            vec![
                Include::Angle("bits/libc-header-start.h".into()),
                Include::Angle("stddef.h".into()),
                Include::Angle("stdarg.h".into()),
                Include::Quoted("local.h".into()),
            ]
        );
    }

    #[test]
    fn binaries_and_big_files_name_nothing_and_a_header_names_a_bounded_number() {
        assert!(includes(b"\x7fELF\0\n#include <stdio.h>\n").is_empty());
        let mut big = b"#include <a.h>\n".to_vec();
        big.resize(MAX_HEADER as usize + 1, b'\n');
        assert!(includes(&big).is_empty());
        let many = "#include <x.h>\n".repeat(1000);
        assert_eq!(includes(many.as_bytes()).len(), MAX_INCLUDES);
    }
}
