//! Writes cpio archives in the kernel's "newc" format, the only one an initramfs accepts.
//!
//! Written here rather than by the `cpio` tool so an archive can be assembled from memory
//! (a script, a generated config) without staging a directory tree, and so the harness needs one
//! Debian package fewer. Archives are left uncompressed: under TCG the guest would spend longer
//! inflating them than qemu spends copying the extra bytes, and the kernel unpacks concatenated
//! archives, so a small per-VM archive can simply be appended to the shared base one.

/// File type bits of `st_mode`, as the kernel's initramfs unpacker reads them.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// One archive under construction; entries are written in the order they are added, so a
/// directory must be added before what it holds.
#[derive(Debug, Default)]
pub(crate) struct Archive {
    bytes: Vec<u8>,
    next_ino: u32,
}

impl Archive {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[])
    }

    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(path, S_IFREG | (mode & 0o7777), 1, (0, 0), data)
    }

    /// A character device node, e.g. `/dev/console` (5, 1), which the kernel opens for init's
    /// stdio before init could mount devtmpfs.
    pub(crate) fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        self.entry(path, S_IFCHR | 0o600, 1, (major, minor), &[])
    }

    /// Closes the archive with the trailer entry and returns its bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.bytes
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> &mut Self {
        let name = path.trim_start_matches('/');
        self.next_ino += 1;
        let name_size = u32::try_from(name.len() + 1).expect("cpio names are short");
        let file_size = u32::try_from(data.len()).expect("cpio entries are under 4 GiB");
        let fields = [
            self.next_ino,
            mode,
            0, // uid: root
            0, // gid: root
            nlink,
            0, // mtime: fixed, so identical inputs give identical archives
            file_size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name_size,
            0, // check: unused in newc
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
        self
    }

    /// newc aligns every header and every file body to four bytes.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_entry_has_the_newc_header_and_four_byte_alignment() {
        let mut archive = Archive::new();
        archive.file("/init", 0o755, b"hello");
        let bytes = archive.finish();
        let header = std::str::from_utf8(&bytes[..110]).unwrap();
        assert!(header.starts_with("070701"));
        // mode field: regular file, 0755
        assert_eq!(&header[14..22], "000081ED");
        // filesize field
        assert_eq!(&header[54..62], "00000005");
        // namesize field counts the NUL
        assert_eq!(&header[94..102], "00000005");
        assert_eq!(&bytes[110..115], b"init\0");
        // header + name = 115, padded to 116; then the body
        assert_eq!(&bytes[116..121], b"hello");
        assert_eq!(bytes.len() % 4, 0);
        let trailer = String::from_utf8_lossy(&bytes);
        assert!(trailer.contains("TRAILER!!!"));
    }

    #[test]
    fn the_same_entries_give_the_same_bytes() {
        let build = || {
            let mut archive = Archive::new();
            archive.dir("/mnvm").file("/mnvm/script", 0o644, b"true\n");
            archive.finish()
        };
        assert_eq!(build(), build());
    }
}
