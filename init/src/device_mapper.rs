//! Just enough of the device-mapper ioctl interface to create a read-only dm-verity
//! device: DM_DEV_CREATE, DM_TABLE_LOAD and DM_DEV_SUSPEND (resume). No libdevmapper,
//! no udev. Layouts follow `include/uapi/linux/dm-ioctl.h`.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

const DM_IOCTL: u8 = 0xfd;
const DM_DEV_CREATE: u8 = 3;
const DM_DEV_REMOVE: u8 = 4;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;
const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_NAME_LEN: usize = 128;
/// sizeof(struct dm_ioctl)
const DM_IOCTL_SIZE: usize = 312;
/// sizeof(struct dm_target_spec)
const DM_TARGET_SPEC_SIZE: usize = 40;

/// `struct dm_ioctl` header followed by an optional payload, in one 8-byte aligned buffer.
struct Request {
    buf: Vec<u64>,
}

impl Request {
    fn new(name: &str, flags: u32, payload: &[u8]) -> Result<Request, String> {
        if name.len() >= DM_NAME_LEN {
            return Err(format!("device-mapper name too long: {name}"));
        }
        let total = DM_IOCTL_SIZE + payload.len();
        let mut bytes = vec![0u8; total.next_multiple_of(8)];
        let put_u32 =
            |b: &mut [u8], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        // version 4.0.0: the kernel accepts any minor it supports.
        put_u32(&mut bytes, 0, 4);
        let data_size = bytes.len() as u32;
        put_u32(&mut bytes, 12, data_size); // data_size
        put_u32(&mut bytes, 16, DM_IOCTL_SIZE as u32); // data_start
        put_u32(&mut bytes, 20, u32::from(!payload.is_empty())); // target_count
        put_u32(&mut bytes, 28, flags);
        bytes[48..48 + name.len()].copy_from_slice(name.as_bytes());
        bytes[DM_IOCTL_SIZE..DM_IOCTL_SIZE + payload.len()].copy_from_slice(payload);
        let buf = bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        Ok(Request { buf })
    }

    fn send(&mut self, command: u8, what: &str) -> Result<(), String> {
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/mapper/control")
            .map_err(|e| format!("cannot open /dev/mapper/control: {e}"))?;
        let request = nix::request_code_readwrite!(DM_IOCTL, command, DM_IOCTL_SIZE);
        // SAFETY: the buffer is at least sizeof(struct dm_ioctl), 8-byte aligned, and its
        // data_size field tells the kernel how much of it may be read and written.
        let rc = unsafe { libc::ioctl(control.as_raw_fd(), request as _, self.buf.as_mut_ptr()) };
        if rc < 0 {
            return Err(format!(
                "device-mapper {what} failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    fn dev(&self) -> u64 {
        self.buf[5] // offset 40
    }
}

/// Creates and activates a read-only device `name` with a single-target `table` line
/// (`start length type params`). Returns the device node, e.g. `/dev/dm-0`.
pub fn create_read_only(name: &str, table: &str) -> Result<String, String> {
    let mut parts = table.splitn(4, ' ');
    let (start, length, target, params) =
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(s), Some(l), Some(t), Some(p)) => (s, l, t, p),
            _ => return Err(format!("malformed device-mapper table: {table}")),
        };
    let parse = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("malformed device-mapper table: {table}"))
    };
    let (start, length) = (parse(start)?, parse(length)?);
    if target.len() >= 16 {
        return Err(format!("device-mapper target name too long: {target}"));
    }

    let mut create = Request::new(name, 0, &[])?;
    create.send(DM_DEV_CREATE, &format!("create of {name}"))?;
    let minor = libc::minor(create.dev());

    // struct dm_target_spec + NUL-terminated params, padded to 8 bytes.
    let mut spec = vec![0u8; DM_TARGET_SPEC_SIZE];
    spec[0..8].copy_from_slice(&start.to_ne_bytes());
    spec[8..16].copy_from_slice(&length.to_ne_bytes());
    spec[24..24 + target.len()].copy_from_slice(target.as_bytes());
    spec.extend_from_slice(params.as_bytes());
    spec.push(0);
    spec.resize(spec.len().next_multiple_of(8), 0);
    let next = spec.len() as u32;
    spec[20..24].copy_from_slice(&next.to_ne_bytes());

    let result = (|| {
        Request::new(name, DM_READONLY_FLAG, &spec)?
            .send(DM_TABLE_LOAD, &format!("table load for {name}"))?;
        Request::new(name, 0, &[])?.send(DM_DEV_SUSPEND, &format!("resume of {name}"))
    })();
    if let Err(e) = result {
        let _ = Request::new(name, 0, &[]).and_then(|mut r| r.send(DM_DEV_REMOVE, "remove"));
        return Err(e);
    }
    Ok(format!("/dev/dm-{minor}"))
}
