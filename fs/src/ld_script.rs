//! GNU ld scripts that stand in for a library: glibc's `libc.so` and gcc's
//! `libgcc_s.so` are a few hundred bytes of text naming the files the linker reads
//! instead (`GROUP ( /lib/x86_64-linux-gnu/libc.so.6
//! /usr/lib/x86_64-linux-gnu/libc_nonshared.a AS_NEEDED ( /lib64/ld-linux-x86-64.so.2 )
//! )`). The linker opens those next, one round trip each on a cold mount; the
//! predictor reads a script's inputs as it reads an ELF file's needed libraries.

/// Largest file taken for a script (glibc's are about 300 bytes).
pub const MAX_SCRIPT: usize = 4096;
/// Most inputs taken from one script.
const MAX_INPUTS: usize = 16;

/// A file a script names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A path, or a bare file name the linker looks for in its search directories.
    File(String),
    /// `-lNAME`: `libNAME.so` or `libNAME.a` in the search directories.
    Library(String),
}

/// The files named by the `GROUP` and `INPUT` commands of `text`, if it is a linker
/// script of at most [`MAX_SCRIPT`] bytes (empty otherwise, and for an ELF file or
/// any other binary).
pub fn inputs(text: &[u8]) -> Vec<Input> {
    let has = |word: &[u8]| memchr::memmem::find(text, word).is_some();
    // (most small files a container reads are not scripts: no work for them)
    if text.len() > MAX_SCRIPT || !(has(b"GROUP") || has(b"INPUT")) {
        return Vec::new();
    }
    let Ok(text) = std::str::from_utf8(text) else {
        return Vec::new();
    };
    let text = without_comments(text);
    let mut found = Vec::new();
    // Depth inside the parentheses of a GROUP or INPUT command (0: outside one).
    let mut depth = 0usize;
    let mut command_next = false;
    for token in tokens(&text) {
        match token {
            "(" if depth > 0 => depth += 1,
            "(" if command_next => depth = 1,
            ")" if depth > 0 => depth -= 1,
            "AS_NEEDED" if depth > 0 => {}
            word if depth > 0 => {
                if found.len() == MAX_INPUTS {
                    break;
                }
                found.push(match word.strip_prefix("-l") {
                    Some(lib) => Input::Library(lib.to_string()),
                    None => Input::File(word.trim_start_matches('=').to_string()),
                });
            }
            _ => {}
        }
        command_next = depth == 0 && matches!(token, "GROUP" | "INPUT");
    }
    found.retain(|i| !matches!(i, Input::File(f) | Input::Library(f) if f.is_empty()));
    found
}

/// `text` with its `/* ... */` comments blanked out.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("/*") {
        out.push_str(&rest[..at]);
        out.push(' ');
        rest = match rest[at + 2..].find("*/") {
            Some(end) => &rest[at + 2 + end + 2..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// Words and single parentheses; commas and white space separate.
fn tokens(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            return None;
        }
        let len = if rest.starts_with(['(', ')']) {
            1
        } else {
            rest.find(|c: char| c.is_whitespace() || "(),".contains(c))
                .unwrap_or(rest.len())
        };
        let (token, after) = rest.split_at(len);
        rest = after;
        Some(token)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(s: &str) -> Input {
        Input::File(s.to_string())
    }

    #[test]
    fn glibcs_and_gccs_scripts_name_their_inputs() {
        let libc = b"/* GNU ld script\n   Use the shared library, but some functions are only in\n   the static library, so try that secondarily.  */\nOUTPUT_FORMAT(elf64-x86-64)\nGROUP ( /lib/x86_64-linux-gnu/libc.so.6 /usr/lib/x86_64-linux-gnu/libc_nonshared.a  AS_NEEDED ( /lib64/ld-linux-x86-64.so.2 ) )\n";
        assert_eq!(
            inputs(libc),
            vec![
                file("/lib/x86_64-linux-gnu/libc.so.6"),
                file("/usr/lib/x86_64-linux-gnu/libc_nonshared.a"),
                file("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let libgcc_s = b"/* GNU ld script\n   Use the shared library, but some functions are only in\n   the static library.  */\nGROUP ( libgcc_s.so.1 -lgcc )\n";
        assert_eq!(
            inputs(libgcc_s),
            vec![file("libgcc_s.so.1"), Input::Library("gcc".into())]
        );
        assert_eq!(
            inputs(b"INPUT(=/usr/lib/a.o,b.o)"),
            vec![file("/usr/lib/a.o"), file("b.o")]
        );
    }

    #[test]
    fn anything_else_names_nothing() {
        assert!(inputs(b"\x7fELF\x02\x01\x01\0GROUP ( /x )\xff").is_empty());
        assert!(inputs(b"OUTPUT_FORMAT(elf64-x86-64)\nSEARCH_DIR(/usr/lib)").is_empty());
        assert!(inputs(b"/* GROUP ( /commented ) */").is_empty());
        assert!(inputs(b"GROUP ( /unterminated").len() == 1);
        let mut big = b"GROUP ( /a ) ".to_vec();
        big.resize(MAX_SCRIPT + 1, b' ');
        assert!(inputs(&big).is_empty());
        let many = format!("GROUP ( {} )", "/f ".repeat(1000));
        assert_eq!(inputs(many.as_bytes()).len(), MAX_INPUTS);
    }
}
