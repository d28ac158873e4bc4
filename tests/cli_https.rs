//! The CLI reaches a Gust behind `https://` (a TLS-terminating proxy, as a remote Gust would
//! sit), trusting a certificate authority given with `--ca-cert`; without it, or with the
//! wrong name in the certificate, it refuses to talk. Names in paths are encoded.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gust_harness::tls::certificates;
use gust_harness::{Gust, GustOptions};

const GUST: &str = env!("CARGO_BIN_EXE_gust");

/// Forwards TLS connections on a port to the API's plain port, one thread per connection.
const TLS_PROXY: &str = r#"
import socket, ssl, sys, threading
cert, key, listen, upstream = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", listen))
server.listen()
def pump(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
def serve(raw):
    try:
        client = context.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError):
        raw.close()
        return
    backend = socket.create_connection(("127.0.0.1", upstream))
    threading.Thread(target=pump, args=(client, backend), daemon=True).start()
    pump(backend, client)
while True:
    connection, _ = server.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"#;

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proxy(dir: &Path, upstream: u16) -> (Proxy, u16) {
    let port = gust_harness::free_port();
    let child = Command::new("python3")
        .arg("-c")
        .arg(TLS_PROXY)
        .arg(dir.join("server.pem"))
        .arg(dir.join("server.key"))
        .arg(port.to_string())
        .arg(upstream.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let up = gust_harness::eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    assert!(up.is_some(), "the TLS proxy does not listen");
    (Proxy(child), port)
}

#[test]
fn the_cli_speaks_https_with_a_given_ca_and_refuses_what_it_cannot_verify() {
    let gust = Gust::start(GUST, GustOptions::default());
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path(), "IP:127.0.0.1");
    let (_proxy, port) = proxy(certs.path(), gust.api_port);
    let url = format!("https://127.0.0.1:{port}");
    let ca = certs.path().join("ca.pem");
    let token = gust.token();
    let code = gust.write_file("hello.py", "def main():\n    return 'over tls'\n");
    let over_tls = |args: &[&str]| {
        let mut all = vec![
            "--url",
            url.as_str(),
            "--token",
            token.as_str(),
            "--ca-cert",
            ca.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        gust.cli(&all)
    };
    over_tls(&[
        "fn",
        "create",
        "hello",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
    ])
    .ok();
    let answer = over_tls(&["fn", "invoke", "hello"]).ok().stdout;
    assert_eq!(answer, "over tls\n");
    // GUST_CA_CERT works like the flag.
    let listed = gust
        .cli_with_env(
            &["--url", &url, "--token", &token, "fn", "list"],
            &[("GUST_CA_CERT", ca.to_str().unwrap())],
        )
        .ok()
        .stdout;
    assert!(listed.contains("hello"), "{listed}");

    // A name that is not one is sent encoded, not as another path: `hello/rollback` is not
    // the rollback of `hello`.
    let err = over_tls(&["fn", "get", "hello/rollback"]).failed();
    assert!(!err.contains("rollback of"), "{err}");
    assert!(err.contains("hello/rollback"), "{err}");

    // Without the CA, the server's certificate is not trusted.
    let err = gust
        .cli(&["--url", &url, "--token", &token, "fn", "list"])
        .failed();
    assert!(
        err.contains("cannot reach the Gust API at https://127.0.0.1"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // A certificate for another name is refused even from the right CA.
    let other = tempfile::tempdir().unwrap();
    certificates(other.path(), "DNS:elsewhere.example");
    let (_other_proxy, other_port) = proxy(other.path(), gust.api_port);
    let other_url = format!("https://127.0.0.1:{other_port}");
    let other_ca = other.path().join("ca.pem");
    let err = gust
        .cli(&[
            "--url",
            &other_url,
            "--token",
            &token,
            "--ca-cert",
            other_ca.to_str().unwrap(),
            "fn",
            "list",
        ])
        .failed();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // A file that holds no certificate, and a URL that is not http(s), are named as such.
    let bogus = gust.write_file("bogus.pem", "not a certificate");
    let err = gust
        .cli(&[
            "--url",
            &url,
            "--ca-cert",
            bogus.to_str().unwrap(),
            "fn",
            "list",
        ])
        .failed();
    assert!(err.contains("no PEM certificate"), "{err}");
    let err = gust
        .cli(&["--url", "ftp://127.0.0.1:1", "fn", "list"])
        .failed();
    assert!(err.contains("expected http://"), "{err}");
}
