//! The HTTP port's accept loop: HTTP/1.1 and HTTP/2 (prior knowledge, as gRPC clients speak
//! it) on one listener, each connection served by hyper with the client's address in every
//! request (`ConnectInfo<SocketAddr>`), `TCP_NODELAY` set, and a graceful stop.
//!
//! This is `axum::serve` with one difference: HTTP/2 frames of up to [`H2_MAX_FRAME_BYTES`]
//! instead of hyper's 16 KiB. A Flight `DoPut` sends record batches of hundreds of kilobytes;
//! in 16 KiB frames each batch is dozens of frames, and every frame is decoded, queued, wakes
//! the call's task and is copied into tonic's buffer on its own (docs/PERFORMANCE.md).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::{debug, error};

/// Largest HTTP/2 frame a client may send (SETTINGS_MAX_FRAME_SIZE; hyper's default is 16 KiB,
/// the protocol allows up to 16 MiB), here and on `--grpc-addr`. Flow-control windows stay at
/// hyper's 1 MiB, so what one connection can buffer is unchanged.
pub const H2_MAX_FRAME_BYTES: u32 = 256 << 10;

/// How long the loop pauses after an accept error that is not about one connection (such as
/// running out of file descriptors), so it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets every
/// connection finish its requests in flight and returns once all have closed.
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()> + Send) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http2().max_frame_size(H2_MAX_FRAME_BYTES);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    error!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        // Without TCP_NODELAY the last frame of a gRPC response (and its trailers) waits for
        // the client's delayed ACK, about 40 ms per call.
        let _ = tcp.set_nodelay(true);
        let service = app
            .clone()
            .map_request(move |mut req: http::Request<Incoming>| {
                req.extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(remote));
                req
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, %remote, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Accept errors about one connection (it was reset or aborted before it was accepted):
/// the listener itself is fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// The server's SETTINGS frame, read after the client's preface: (identifier, value) pairs.
    async fn server_settings(s: &mut TcpStream) -> Vec<(u16, u32)> {
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap(); // an empty SETTINGS frame
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(head[3], 4, "the server speaks first with SETTINGS");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        payload
            .chunks(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn one_port_speaks_http1_and_http2_with_large_frames_and_stops_gracefully() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, async {
            let _ = stopped.await;
        }));

        // HTTP/2 with prior knowledge: frames up to H2_MAX_FRAME_BYTES (SETTINGS id 5).
        let mut h2 = TcpStream::connect(addr).await.unwrap();
        let settings = server_settings(&mut h2).await;
        assert!(
            settings.contains(&(5, H2_MAX_FRAME_BYTES)),
            "SETTINGS_MAX_FRAME_SIZE: {settings:?}"
        );
        drop(h2);

        // HTTP/1.1 on the same port, the request carrying the client's address.
        let mut h1 = TcpStream::connect(addr).await.unwrap();
        let me = h1.local_addr().unwrap();
        h1.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        h1.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&me.to_string()), "{answer}");

        // Stopping: the loop stops accepting and returns once its connections are closed.
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns after the stop signal")
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer accepting"
        );
    }
}
