//! Files on the host. The agent runs as root with host directories mounted (the CDI dir, NFD's
//! `features.d`), which other node software and anyone with write access to them can change too.
//! Everything the agent writes there goes through [`write()`], and every file it reads from a path
//! someone else could have planted goes through [`read()`]:
//!
//! - a planted symlink is never followed and never left in place of our file, so the agent cannot
//!   be made to overwrite (or read into memory) a file elsewhere on the node;
//! - a FIFO, a device or a socket is refused, so a read cannot block the agent forever or stream
//!   `/dev/zero` into memory;
//! - a read is capped in size.
//!
//! The directory itself is trusted: it is the volume the DaemonSet mounts.

mod read;
mod write;

pub use read::{read, Links, ReadError, MAX_HOST_FILE};
pub use write::{write, WriteError};

/// What a file that is not a regular file is, for errors: `a symlink`, `a FIFO`, …
fn kind(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_symlink() {
        "a symlink"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// A size for people: `300 KiB`, `16 MiB`, `512 bytes`; rounded up, so a file just over a
/// limit never reads as the limit itself.
pub fn format_size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    if bytes >= 10 * MIB {
        format!("{} MiB", bytes.div_ceil(MIB))
    } else if bytes >= KIB {
        format!("{} KiB", bytes.div_ceil(KIB))
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests;
