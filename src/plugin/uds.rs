//! gRPC over unix sockets: a client channel to a socket path (tonic wants a URI; the connector
//! ignores it and dials the path).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Open a gRPC channel to the unix socket at `path`. `request_timeout` bounds each unary call;
/// leave it `None` for channels that carry long-lived streams.
pub async fn connect(
    path: &Path,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    // The authority is never used for routing; "localhost" is what the kubelet's Go clients send.
    let mut endpoint = Endpoint::from_static("http://localhost").connect_timeout(connect_timeout);
    if let Some(timeout) = request_timeout {
        endpoint = endpoint.timeout(timeout);
    }
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}
