//! Extended attributes read straight from the kernel (`llistxattr`/`lgetxattr`), not
//! through Skiff's own helpers, so a comparison does not trust the code under test.
//! Any error fails the test. Also compiled into `fs/tests/common` (by path): std and
//! libc only.

use std::ffi::CString;
use std::path::Path;

/// Every extended attribute of `p` (a symlink itself, not its target), sorted by name.
pub fn xattrs_of(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).expect("a path without NUL");
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: a valid C string and a buffer of the length given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "listxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = CString::new(name).expect("names are NUL-separated");
        let mut val = vec![0u8; 64 << 10];
        // SAFETY: valid C strings and a buffer of the length given.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(
            m >= 0,
            "getxattr {} {}: {}",
            p.display(),
            String::from_utf8_lossy(name),
            std::io::Error::last_os_error()
        );
        val.truncate(m as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), val));
    }
    out.sort();
    out
}
