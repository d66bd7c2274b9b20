//! systemd readiness: with `Type=notify`, tell systemd the mount is up (sd_notify READY=1)
//! through $NOTIFY_SOCKET. Without that variable this does nothing.

use std::os::unix::net::UnixDatagram;

pub fn ready(status: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("READY=1\nSTATUS={status}\n");
    let res = UnixDatagram::unbound().and_then(|sock| {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &addr)
        } else {
            sock.send_to(msg.as_bytes(), &path)
        }
    });
    if let Err(e) = res {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_to_the_notify_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind");
        std::env::set_var("NOTIFY_SOCKET", &path);
        ready("mounted at /x");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 256];
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let n = sock.recv(&mut buf).expect("a datagram");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=mounted at /x\n");
    }
}
