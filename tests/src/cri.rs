//! A Kubernetes CRI client (`runtime.v1`), as the kubelet talks to containerd: the
//! generated types and clients, and a connection over containerd's unix socket.

#![allow(missing_docs, clippy::all)]

/// The CRI `runtime.v1` API.
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

use std::path::Path;

/// The runtime and image services of the CRI server on `socket`.
pub async fn connect(
    socket: &Path,
) -> (
    v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    v1::image_service_client::ImageServiceClient<tonic::transport::Channel>,
) {
    let path = socket.to_path_buf();
    // The URI is required by the API but unused: every connection goes to `path`.
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connecting to CRI on {}: {e}", socket.display()));
    (
        v1::runtime_service_client::RuntimeServiceClient::new(channel.clone()),
        v1::image_service_client::ImageServiceClient::new(channel),
    )
}

/// Waits until containerd's CRI plugin answers: it serves the socket before its
/// initialisation is over and answers every call "server is not initialized yet" until
/// then (containerd's `checkInitialized`), as a kubelet sees while the node starts.
/// Gives the `Version` answer, or the last error after `timeout`.
pub async fn wait_initialized(
    runtime: &mut v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    timeout: std::time::Duration,
) -> Result<v1::VersionResponse, tonic::Status> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match runtime.version(v1::VersionRequest::default()).await {
            Ok(answer) => return Ok(answer.into_inner()),
            Err(e)
                if e.message().contains("not initialized")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => return Err(e),
        }
    }
}
