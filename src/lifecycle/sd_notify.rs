//! systemd's readiness protocol (`sd_notify`): one datagram to `$NOTIFY_SOCKET`. Written here
//! because it is a single `sendto`, not worth a dependency. With `Type=notify` and
//! `NotifyAccess=all`, a successor that took the mount over names itself the unit's main process
//! (`MAINPID=`), which is what makes an in-place upgrade work under systemd.

use std::os::unix::net::UnixDatagram;

/// Send `state` ("READY=1", "STOPPING=1", ...) when systemd asked for notifications; otherwise
/// do nothing. Failures are not errors: the mount works the same without.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::debug!("cannot notify the service manager: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_datagram_reaches_the_socket_named_by_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // SAFETY: this test is the only code reading NOTIFY_SOCKET, and sets it before use.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        super::notify("READY=1\nMAINPID=42");
        // SAFETY: as above.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42");
    }
}
